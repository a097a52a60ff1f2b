"""Check: every rank trains on the same batches (a data-parallel job without a DistributedSampler, or every rank's
loader shuffled with one seed): with one set of weights, the same batch gives every rank the same loss, step after
step, so N ranks do the work of one. The same loss on every rank is also what a script logs that passes an
all-reduced loss to rec.step(): the ranks' per-channel zero fractions, the same numbers only for the same batches,
confirm it."""

from __future__ import annotations

import math

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks.common import HOLD_WINDOW, STAY_LEAST, Context, aligned_scalar, stacked_on_common_steps
from tview.diagnose.checks.ranks import zero_frac_signals_of
from tview.diagnose.findings import Finding, declare, make

KINDS = declare({
    "ranks_same_data": ("warning", "loss",
                        "every rank's loss is the same at every step while it changes from one step to the next, and "
                        "so are their layers' per-channel zero fractions: the ranks train on the same batches (no "
                        "DistributedSampler, or every rank's loader seeded alike), so N ranks do the work of one"),
})

SAME_RTOL = 1e-5     # losses equal within this (the same batch and weights: the same bits on one kind of device)
SAME_SHARE = 0.9     # ... on at least this share of the records from the onset on, over HOLD_WINDOW records and to
SAME_STAY = 0.5      # ... the end, at least this share of the run's records (a run of the same data, not a moment)
SAME_CHANGE = 1e-6   # and the ranks' zero fractions move alike: their step-to-step changes within this (a median)


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


def batches_alike(change: np.ndarray) -> bool:
    """Whether the ranks' per-channel zero fractions of one layer moved alike from step to step ([ranks, steps] of
    repeated.change_of): with the same batches and weights they are the same numbers on every rank; with the same
    loss logged on every rank (an all-reduced loss passed to rec.step) and batches of their own, they are not."""
    finite = np.isfinite(change)  # each step's spread over the ranks with a value (no nanmax: no all-NaN warning)
    spread = np.where(finite, change, -np.inf).max(axis=0) - np.where(finite, change, np.inf).min(axis=0)
    spread = np.where(finite.any(axis=0), spread, np.nan)
    return bool(finite.any() and detect.nanmedian(spread) <= SAME_CHANGE)


def _confirmed(ctx: Context, ranks: list[int], since: int) -> bool:
    """The first layer with per-channel zero fractions on every rank says the batches are the same (batches_alike)
    from step `since` on; False where none is recorded (the loss alone cannot tell the same batches from one
    all-reduced loss logged by every rank)."""
    signals = zero_frac_signals_of(ctx)
    ranks = [r for r in ranks if r in signals]
    if len(ranks) < 2:
        return False
    for layer in ctx.run.layers:
        got = stacked_on_common_steps([signals[r]["change"].get(layer) for r in ranks])
        if got is None:
            continue
        change = got[1][:, got[0] >= since]
        if change.shape[1] >= STAY_LEAST and detect.nanmedian(change) > SAME_CHANGE:  # zeros that move (a ReLU's;
            return batches_alike(change)  # a conv's output has none: its fractions stay 0 whatever the batch)
    return False


def check(ctx: Context) -> list[Finding]:
    got = aligned_scalar(ctx.run, "loss", ctx.max_points, ctx.rank_summaries)
    if got is None:
        return []
    steps, ranks, loss = got
    start = same_onset(loss)
    if start is None or not _confirmed(ctx, ranks, int(steps[start])):
        return []
    names = f"ranks {ranks[0]}-{ranks[-1]}" if len(ranks) > 2 else f"ranks {ranks[0]} and {ranks[-1]}"
    return [make("ranks_same_data", f"{names}: the same loss at every step from step {steps[start]} on "
                 f"({float(np.median(loss[0, start:])):.3g} as a median), where different batches give different "
                 f"losses: the ranks train on the same batches (no DistributedSampler, or every rank's loader "
                 f"seeded alike?); {len(ranks)} ranks do the work of one", step=int(steps[start]), stat="loss")]
