"""`tview.diagnose(run)`: name the rank, layer, step and tensor where training went wrong, worst first.

Kinds (see KINDS for the one-line meaning of each): nonfinite, exploding_gradients, replicas_differ,
rank_stopped, rank_missing (errors); vanishing_gradients, dead_filters, dead_units, frozen_filters, rank_diverges,
slow_rank, rank_lags (warnings). Only numpy: runs wherever tview.store does (ParaView's Python included).
"""

from __future__ import annotations

from tview.diagnose import checks
from tview.diagnose.findings import KINDS, Finding, worst_first
from tview.diagnose.noise import NoiseScale, noise_scale, noise_scale_from_norms

CLEAN_MESSAGE = ("no findings: no NaN/Inf, no exploding or vanishing gradients, no dead or frozen filters, no "
                 "fully connected layer with a quarter of its units dead, ranks agree")


def diagnose(run, max_points: int | None = None, rank_summaries: dict | None = None) -> list[Finding]:
    """Every finding of a run (an open Run or a run folder), worst first: errors before warnings, earliest
    step first. max_points: read at most this many rows per series (None: every recorded step). rank_summaries:
    run.rank_summaries(), when the caller has read them (they say which ranks saw NaN/Inf, and where each
    stopped, without reading the shards)."""
    if isinstance(run, (str, bytes)) or hasattr(run, "__fspath__"):
        from tview.store.reader import open_run
        with open_run(run, skip_bad_shards=True) as opened:
            return diagnose(opened, max_points, rank_summaries)
    if rank_summaries is None:
        rank_summaries = run.rank_summaries()
    nonfinite = checks.check_nonfinite(run, max_points, rank_summaries)
    before = {r: nonfinite[0].step for r in run.ranks} if nonfinite else None
    dead = checks.check_dead(run, max_points)
    found = (nonfinite + checks.check_gradients(run, max_points, before) + dead
             + checks.check_frozen(run, max_points, dead) + checks.check_loss(run, max_points, rank_summaries)
             + checks.check_time(run, max_points, rank_summaries) + checks.check_status(run, rank_summaries)
             + checks.check_replicas(run, max_points, rank_summaries))
    return worst_first(found)


def summary_line(findings: list[Finding]) -> str:
    """One line: the clean message, or how many findings of which severity."""
    if not findings:
        return CLEAN_MESSAGE
    errors = sum(f.severity == "error" for f in findings)
    return f"{len(findings)} finding(s): {errors} error(s), {len(findings) - errors} warning(s)"


__all__ = ["diagnose", "Finding", "KINDS", "summary_line", "CLEAN_MESSAGE", "NoiseScale", "noise_scale",
           "noise_scale_from_norms"]
