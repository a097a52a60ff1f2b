"""A rank whose batches carry no variation (its data loader broken: every input zero, or one constant image): each
channel of a layer is then all zero or all non-zero over the whole batch (the per-channel zero fraction exactly 0
or 1 on every channel) from the step it broke, while the other ranks' are not. It shows at once, where the loss
of that rank drifts away from the others' only slowly."""

from __future__ import annotations

import math

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks import repeated
from tview.diagnose.checks.common import HOLD_WINDOW, MAX_RANKS, STAY_LEAST, earliest_onsets, stacked_on_common_steps

UNIFORM_TOL = 1e-3    # a channel's zero fraction within this of 0 or 1: all or none of the batch's values are zero
UNIFORM_SHARE = 0.9   # a rank uniform (the others not) on at least this share of the records from its onset on
UNIFORM_STAY = 0.1    # ... over HOLD_WINDOW records after it and over all to the end (at least the last tenth)
OTHERS_SHARE = 0.5    # a layer counts at a step where fewer than this share of the other ranks are uniform there


def zero_frac_signals(run, rank: int, max_points=None) -> dict[str, dict]:
    """One read of a rank's per-channel zero fractions, for the layers with 2 or more channels: {"uniform": {layer:
    (steps, uniform per step)}, "change": {layer: repeated.change_of(...)}} (empty where none is recorded)."""
    out: dict[str, dict] = {"uniform": {}, "change": {}}
    try:
        got = run.channel_stats("act_channel_zero_frac", rank, None, max_points)
    except KeyError:  # not recorded
        return out
    for layer, (steps, z) in got.items():
        z = np.asarray(z, dtype=np.float64)
        if z.ndim == 2 and z.shape[1] >= 2 and len(steps):
            with np.errstate(invalid="ignore"):
                out["uniform"][layer] = np.asarray(steps), ((z <= UNIFORM_TOL) | (z >= 1 - UNIFORM_TOL)).all(axis=1)
            out["change"][layer] = repeated.change_of(steps, z)
    return out


def uniform_onsets(run, done: dict) -> dict[int, tuple[int, str]]:
    """{rank: (step, layer)} of the ranks whose batches turn uniform on some layer where the other ranks' are not,
    held from that step to the end; the earliest layer's onset. done: {rank: zero_frac_signals' "uniform"} of the
    ranks read (the first MAX_RANKS)."""
    return earliest_onsets(run.layers, [r for r in run.ranks[:MAX_RANKS] if r in done], done, _layer_onsets)


def _layer_onsets(series: list, ranks: list) -> dict[int, int]:
    """{rank: onset step} on one layer: series, each rank's (steps, flags) or None."""
    got = stacked_on_common_steps(series)
    if got is None:
        return {}
    steps, flags = got
    least = max(STAY_LEAST, int(math.ceil(UNIFORM_STAY * len(steps))))
    out = {}
    for k in range(len(ranks)):
        others = np.delete(flags, k, axis=0).mean(axis=0)
        alone = flags[k] & (others < OTHERS_SHARE)
        start = detect.first_held(detect.held(alone, HOLD_WINDOW, UNIFORM_SHARE), least)
        if start is not None:
            out[ranks[k]] = int(steps[start + int(np.flatnonzero(alone[start:])[0])])
    return out
