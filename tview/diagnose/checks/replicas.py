"""Check: data-parallel replicas that hold different weights after the optimizer step (first step and layer)."""

from __future__ import annotations

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks import common
from tview.diagnose.checks.common import Context, aligned_scalar, common_steps, on
from tview.diagnose.findings import Finding, declare, make

KINDS = declare({
    "replicas_differ": ("error", "weight",
                        "data-parallel ranks hold different weights after the optimizer step: the first step and "
                        "layer where the per-layer weight fingerprints (weight_norm, weight_sum) differ"),
})

FLOAT32_RTOL = 2.0 ** -23  # float32 fingerprints: equal within one rounding step (float64: exact)
FINGERPRINTS = ("weight_sum", "weight_norm")


REPLICA_READS = 8  # beyond MAX_RANKS ranks: the ranks the summaries name as differing read in full, at most


STEP_BLOCK = 64  # steps compared at a time: the first block where replicas differ ends the search


def _fingerprint(run, name, max_points, ranks=None):
    """(steps every rank has, per rank its masked [steps, layers] on them, float64 stored?) of one per-layer
    fingerprint (on `ranks`, default every readable rank)."""
    got = {r: run.stat_matrix(name, r, max_points=max_points) for r in (run.ranks if ranks is None else ranks)}
    common = common_steps([np.asarray(steps) for steps, _ in got.values()])
    exact = all(np.ma.getdata(m).dtype == np.float64 for _, m in got.values())
    return common, [m[on(s, common)] for s, m in got.values()], exact


def first_difference(rows: list, rtol: float, end: int):
    """(row, layer, every rank's value there, which ranks are odd there) of the first of the first `end` rows
    [steps, layers] (one masked array per rank) where the ranks differ (detect.disagreeing), or None; compared
    STEP_BLOCK rows at a time, so replicas that differ early are not compared to the end."""
    for a in range(0, end, STEP_BLOCK):
        v = np.stack([np.ma.filled(m[a:min(a + STEP_BLOCK, end)].astype(np.float64), np.nan) for m in rows])
        R, T, L = v.shape
        differs, odd = detect.disagreeing(v.reshape(R, T * L), rtol)
        hit = np.flatnonzero(differs)
        if len(hit):
            t, layer = divmod(int(hit[0]), L)
            return a + t, layer, v[:, t, layer], odd[:, hit[0]]
    return None


def replica_suspects(run, rank_summaries: dict) -> tuple[list[int], list[int] | None] | None:
    """From the rank summaries' weight_sum trends (whole-network sums, exact): None when every rank holds the same
    sum at every trend point, else (ranks to read in full: one that agrees with the majority, then up to
    REPLICA_READS that differ from it at the first trend point where ranks differ; the ranks that differ there).
    Weights that drift apart stay apart, so a rank that differs before that point still differs at it. Trends
    without weight_sum: (every readable rank, None), read in full."""
    got = aligned_scalar(run, "weight_sum", None, rank_summaries)
    if got is None:
        return list(run.ranks), None
    _, ranks, values = got
    differs, odd = detect.disagreeing(values, 0.0)
    hit = np.flatnonzero(differs)
    if not len(hit):
        return None
    at = odd[:, hit[0]]
    odd_ranks = [ranks[k] for k in np.flatnonzero(at)]
    reference = [ranks[k] for k in np.flatnonzero(~at)][:1]
    return reference + odd_ranks[:REPLICA_READS], odd_ranks


def check_replicas(run, max_points=None, rank_summaries: dict | None = None) -> list[Finding]:
    """The first step and layer where data-parallel ranks hold different weights (weight_sum, weight_norm).
    Beyond MAX_RANKS ranks, with rank_summaries: only if their weight_sum trends differ, read on the ranks
    replica_suspects names (the step and layer exact between those ranks)."""
    if len(run.ranks) < 2:
        return []
    ranks, named = run.ranks, None
    if rank_summaries is not None and len(run.ranks) > common.MAX_RANKS:
        suspects = replica_suspects(run, rank_summaries)
        if suspects is None:
            return []
        ranks, named = suspects
    best = None
    for name in [n for n in FINGERPRINTS if n in run.stat_names()]:
        steps, rows, exact = _fingerprint(run, name, max_points, ranks)
        rtol = 0.0 if exact else FLOAT32_RTOL
        end = len(steps) if best is None else int(np.searchsorted(steps, best[0]))  # only an earlier step wins
        found = first_difference(rows, rtol, end)
        if found is not None:
            t, layer, values, odd = found
            best = (int(steps[t]), layer, name, rtol, values, odd)
    return [] if best is None else [_replica_finding(run, *best, ranks=ranks, named=named)]


def _replica_finding(run, step, layer, name, rtol, values, odd, ranks=None, named=None) -> Finding:
    """ranks: the ranks values and odd are of (default every readable rank); named: the ranks that differ, when
    known beforehand (else those odd marks)."""
    ranks = run.ranks if ranks is None else ranks
    differing = named if named is not None else [ranks[k] for k in np.flatnonzero(odd)]
    rank = differing[0] if len(differing) == 1 and len(run.ranks) > 2 else None
    how = "float64, exact" if rtol == 0 else f"float32, relative tolerance {rtol:g}"
    vals = ", ".join(f"rank {r}: {v:.9g}" for r, v in zip(ranks[:8], values[:8]))
    who = f"rank {rank} differs from the others" if rank is not None else "ranks differ"
    return make("replicas_differ", f"weights of {run.layers[layer]} differ across ranks after the optimizer step "
                f"at step {step}: {who} ({name}, {how}: {vals})", rank=rank, layer=run.layers[layer], step=step,
                stat=name)


def reads(ctx: Context) -> tuple[str, ...]:
    """The fingerprints of every rank, when check_replicas reads every rank's (tview.diagnose.reads)."""
    every = ctx.rank_summaries is None or len(ctx.run.ranks) <= common.MAX_RANKS
    return FINGERPRINTS if every else ()


def check(ctx: Context) -> list[Finding]:
    return check_replicas(ctx.run, ctx.max_points, ctx.rank_summaries)
