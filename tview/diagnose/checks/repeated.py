"""A rank whose batches repeat (its data loader stuck on one batch, or a sampler that yields the same indices): the
per-channel zero fractions of its layers then change from one step to the next only as the weights move, many
times less than on the other ranks, whose batches differ. It shows from the first repeated step, where that rank's
loss falls below the others' (it learns its one batch by heart) only slowly."""

from __future__ import annotations

import math

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks.common import HOLD_WINDOW, STAY_LEAST, earliest_onsets, stacked_on_common_steps

REPEAT_FACTOR = 0.2   # a rank's step-to-step change of a layer's zero fractions below this x the other ranks' median
REPEAT_SHARE = 0.9    # ... on at least this share of the records from its onset on
REPEAT_STAY = 0.1     # ... over HOLD_WINDOW records after it and over all to the end (at least the last tenth)


def change_of(steps: np.ndarray, zero_frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(steps but the last, the mean absolute change of the per-channel zero fractions [steps, channels] from each
    recorded step to the next): how much the batch, and the weights, moved the layer's zeros."""
    with np.errstate(invalid="ignore"):
        return np.asarray(steps)[:-1], np.nanmean(np.abs(np.diff(zero_frac, axis=0)), axis=1)


def repeated_onsets(run, done: dict, ranks: list) -> dict[int, tuple[int, str, float]]:
    """{rank: (step, layer, how many times less its zeros change than the other ranks')} of the ranks whose batches
    repeat from that step on (the step whose batch comes again), on the earliest layer; done: {rank: {layer: (steps,
    change)}} (change_of of each layer with channels)."""
    return earliest_onsets(run.layers, list(ranks), done, _layer_onsets)


def _layer_onsets(series: list, ranks: list) -> dict[int, tuple[int, float]]:
    """{rank: (onset step, the other ranks' median change over its own from there)} on one layer: series, each
    rank's (steps, change) or None."""
    got = stacked_on_common_steps(series)
    if got is None:
        return {}
    steps, change = got
    least = max(STAY_LEAST, int(math.ceil(REPEAT_STAY * len(steps))))
    out = {}
    for k in range(len(ranks)):
        others = detect.nanmedian(np.delete(change, k, axis=0), axis=0)
        with np.errstate(invalid="ignore"):
            flags = (others > 0) & (change[k] < REPEAT_FACTOR * others)
        start = detect.first_held(detect.held(flags, HOLD_WINDOW, REPEAT_SHARE), least)
        if start is not None:
            start += int(np.flatnonzero(flags[start:])[0])
            mine = float(detect.nanmedian(change[k, start:]))
            less = float(detect.nanmedian(others[start:])) / mine if mine > 0 else math.inf
            out[ranks[k]] = (int(steps[start]), less)
    return out
