"""Check: every rank trains on the same batches (a data-parallel job without a DistributedSampler, or every rank's
loader shuffled with one seed): with one set of weights, the same batch gives every rank the same loss, step after
step, so N ranks do the work of one."""

from __future__ import annotations

import math

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks.common import HOLD_WINDOW, STAY_LEAST, Context, aligned_scalar
from tview.diagnose.findings import Finding, declare, make

KINDS = declare({
    "ranks_same_data": ("warning", "loss",
                        "every rank's loss is the same at every step while it changes from one step to the next: "
                        "the ranks train on the same batches (no DistributedSampler, or every rank's loader seeded "
                        "alike), so N ranks do the work of one"),
})

SAME_RTOL = 1e-5     # losses equal within this (the same batch and weights: the same bits on one kind of device)
SAME_SHARE = 0.9     # ... on at least this share of the records from the onset on, over HOLD_WINDOW records and to
SAME_STAY = 0.5      # ... the end, at least this share of the run's records (a run of the same data, not a moment)


def same_onset(loss: np.ndarray) -> int | None:
    """The first column of [ranks, steps] `loss` from which every rank's loss is the same (SAME_RTOL) while it
    moves from the record before (a network whose output no longer depends on its input gives every rank one
    constant loss: not this), held (SAME_SHARE) to the end over at least SAME_STAY of the records; or None."""
    if len(loss) < 2 or loss.shape[1] < 2 * STAY_LEAST:
        return None
    with np.errstate(invalid="ignore"):
        top, bottom = loss.max(axis=0), loss.min(axis=0)
        equal = np.isfinite(top) & np.isfinite(bottom) & (top - bottom <= SAME_RTOL * np.abs(top))
        moving = np.r_[False, np.abs(np.diff(loss[0])) > SAME_RTOL * np.abs(loss[0, 1:])]
    flags = equal & moving
    least = max(STAY_LEAST, int(math.ceil(SAME_STAY * loss.shape[1])))
    start = detect.first_held(detect.held(flags, HOLD_WINDOW, SAME_SHARE), least)
    if start is None:
        return None
    first = start + int(np.flatnonzero(flags[start:])[0])
    return first - 1 if first > 0 and equal[first - 1] else first  # the record it moved from was equal too


def check(ctx: Context) -> list[Finding]:
    got = aligned_scalar(ctx.run, "loss", ctx.max_points, ctx.rank_summaries)
    if got is None:
        return []
    steps, ranks, loss = got
    start = same_onset(loss)
    if start is None:
        return []
    names = f"ranks {ranks[0]}-{ranks[-1]}" if len(ranks) > 2 else f"ranks {ranks[0]} and {ranks[-1]}"
    return [make("ranks_same_data", f"{names}: the same loss at every step from step {steps[start]} on "
                 f"({float(np.median(loss[0, start:])):.3g} as a median), where different batches give different "
                 f"losses: the ranks train on the same batches (no DistributedSampler, or every rank's loader "
                 f"seeded alike?); {len(ranks)} ranks do the work of one", step=int(steps[start]), stat="loss")]
