"""`tview.diagnose(run)`: name the rank, layer, step and tensor where training went wrong, the cause first.

The checks are modules of tview.diagnose.checks (CHECKS), each declaring its kinds (KINDS: kind -> severity,
tensor, meaning) and, if it reads every rank, `reads(ctx)` (the per-layer statistics it reads) and `rank_work(ctx)`
(what it computes on each rank): done with every rank's scalars in one pass over the shards before the checks run
(tview.diagnose.reads). tview.diagnose.causes folds the findings a cause leads to under it. Only numpy: runs
wherever tview.store does (ParaView's Python included).
"""

from __future__ import annotations

from tview.diagnose import causes
from tview.diagnose.checks import CHECKS, Context
from tview.diagnose.checks.common import MAX_RANKS
from tview.diagnose.findings import KINDS, Finding, worst_first
from tview.diagnose.noise import NoiseScale, noise_scale, noise_scale_from_norms
from tview.diagnose.reads import Reads

CLEAN_MESSAGE = ("no findings: no NaN/Inf, no jump of the learning rate, the update or the loss, no exploding or "
                 "vanishing gradients, no layer cut off from the gradient, no dead or frozen filters or layers, "
                 "ranks agree")


def diagnose(run, max_points: int | None = None, rank_summaries: dict | None = None) -> list[Finding]:
    """The findings of a run (an open Run or a run folder), each cause with what followed from it (followed_by),
    worst chain first, then the earliest. max_points: read at most this many rows per series (None: every
    recorded step; the dashboard and the command line both read every one). rank_summaries:
    run.rank_summaries(), when the caller has read them (they say which ranks saw NaN/Inf, and where each
    stopped, without reading the shards)."""
    if isinstance(run, (str, bytes)) or hasattr(run, "__fspath__"):
        from tview.store.reader import open_run
        with open_run(run, skip_bad_shards=True) as opened:
            return diagnose(opened, max_points, rank_summaries)
    if rank_summaries is None:
        rank_summaries = run.rank_summaries()
    ctx = Context(Reads(run, max_points), max_points, rank_summaries)
    ctx.run.gather(run.ranks[:MAX_RANKS], *_declared(ctx))
    for check in CHECKS:
        for f in check.check(ctx):
            ctx.found.setdefault(f.kind, []).append(f)
    found = [f for group in ctx.found.values() for f in group]
    return causes.fold(found, causes.record_stride(run))


def _declared(ctx: Context) -> tuple[set[str], dict]:
    """What the checks read of every rank (their `reads`) and compute on each (their `rank_work`): one pass."""
    stats = {name for check in CHECKS if hasattr(check, "reads") for name in check.reads(ctx)}
    work = {check.__name__: check.rank_work(ctx) for check in CHECKS if hasattr(check, "rank_work")}
    return stats, work


def every_finding(findings: list[Finding]) -> list[Finding]:
    """The findings and those folded under them, in list order (a cause before what followed it)."""
    out = []
    for f in findings:
        out += [f] + every_finding(f.followed_by)
    return out


def summary_line(findings: list[Finding]) -> str:
    """One line: the clean message, or how many findings of which severity (folded ones counted apart)."""
    if not findings:
        return CLEAN_MESSAGE
    errors = sum(f.severity == "error" for f in findings)
    folded = len(every_finding(findings)) - len(findings)
    more = f"; {folded} more folded under them" if folded else ""
    return f"{len(findings)} finding(s): {errors} error(s), {len(findings) - errors} warning(s){more}"


__all__ = ["diagnose", "Finding", "KINDS", "CHECKS", "summary_line", "every_finding", "CLEAN_MESSAGE", "NoiseScale",
           "noise_scale", "noise_scale_from_norms", "worst_first"]
