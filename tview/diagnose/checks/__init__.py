"""The registry of `tview.diagnose`'s checks: one module per family, each declaring its KINDS and a
`check(ctx) -> list[Finding]`; `diagnose()` runs them in this order (a later check may read what an earlier one
found in ctx.found: gradients and the optimizer's checks stop before the first NaN/Inf). A module that reads every
rank declares it: `reads(ctx)` (the per-layer statistics) and `rank_work(ctx)` (a function of (run, rank) whose
answers its check takes from ctx.run.worked(module name)), done in diagnosis's one pass over the shards
(tview.diagnose.reads). Adding a check is adding a module here."""

from __future__ import annotations

from tview.diagnose.checks import dead, gradients, nonfinite, optimizer, ranks, replicas, same_data
from tview.diagnose.checks.common import Context

CHECKS = (nonfinite, optimizer, gradients, dead, ranks, replicas, same_data)

__all__ = ["CHECKS", "Context"]
