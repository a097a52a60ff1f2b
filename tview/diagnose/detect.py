"""Pure numpy detectors on recorded series: onsets of jumps, trailing streaks, disagreement across ranks.

Each takes plain arrays (steps ascending, NaN where not measured) and returns indices or small arrays, so it is
tested on made-up series with known answers and reused by `tview.diagnose` on real runs.
"""

from __future__ import annotations

import numpy as np


def nanmedian(values: np.ndarray, axis=None) -> np.ndarray:
    """Median over finite values; NaN (no warning) where there is none. As np.nanmedian (the mean of the two
    middle values for an even count) by one sort: numpy's masked median for short rows is ten times slower."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, np.nan)
    if axis is None:
        v, axis = v.ravel(), 0
    s = np.moveaxis(np.sort(v, axis=axis), axis, -1)  # NaN sort last
    if s.shape[-1] == 0:
        return np.full(s.shape[:-1], np.nan)[()]
    n = np.isfinite(s).sum(axis=-1)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(s, (n // 2)[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(n > 0, (lo + hi) / 2, np.nan)[()]


def rolling_median(values: np.ndarray, width: int, centered: bool = True) -> np.ndarray:
    """Median of each point's window along the last axis (centered, or trailing: the point and the width-1
    before), over finite values; windows are cut at the ends of the series."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape[-1] == 0 or width <= 1:
        return v.copy()
    before = width // 2 if centered else width - 1
    pad = [(0, 0)] * (v.ndim - 1) + [(before, width - 1 - before)]
    padded = np.pad(np.where(np.isfinite(v), v, np.nan), pad, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return nanmedian(windows, axis=-1)


def trailing_streak(flags: np.ndarray) -> int | None:
    """Index where the final run of True values (the one reaching the last element) starts; None if the last
    element is False or flags is empty."""
    flags = np.asarray(flags, dtype=bool)
    if len(flags) == 0 or not flags[-1]:
        return None
    false = np.flatnonzero(~flags)
    return int(false[-1] + 1) if len(false) else 0


def first_run(flags: np.ndarray, length: int) -> int | None:
    """Index where the first run of at least `length` True values starts (a shorter run ending the series
    counts too); None if there is none."""
    flags = np.asarray(flags, dtype=bool)
    count = 0
    for i, f in enumerate(flags):
        count = count + 1 if f else 0
        if count >= length or (f and i == len(flags) - 1):
            return i - count + 1
    return None


def jump_onset(values: np.ndarray, factor: float, history: int = 20, least: int = 5, sustain: int = 2,
               up: bool = True, level: str = "median") -> int | None:
    """First index where a positive series leaves its recent level: above factor x (up) or below 1/factor x
    (down) the median (level "median") or the largest (level "max": above everything it had lately) of up to
    `history` finite values before it (at least `least` of them), for `sustain` consecutive finite values (fewer
    when the series ends). Non-finite values are skipped."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(v))
    finite = v[idx]
    if len(finite) <= least:
        return None
    padded = np.concatenate([np.full(history, np.nan), finite])
    windows = np.lib.stride_tricks.sliding_window_view(padded, history)[:len(finite)]
    if level == "max":
        with np.errstate(invalid="ignore"):
            base = np.fmax.reduce(windows, axis=1)
    else:
        base = nanmedian(windows, axis=1)
    n = len(finite)
    ahead = np.concatenate([finite, np.full(sustain, np.nan)])
    ahead = np.lib.stride_tricks.sliding_window_view(ahead, sustain)[:n]  # each value and the sustain-1 after it
    with np.errstate(invalid="ignore"):
        beyond = (ahead > factor * base[:, None]) if up else (ahead < base[:, None] / factor)
    # every one of the next `sustain` values beyond the level before the first (fewer at the end of the series)
    flags = (base > 0) & (beyond | np.isnan(ahead)).all(axis=1) & beyond[:, 0]
    flags[:least] = False
    hit = np.flatnonzero(flags)
    return None if not len(hit) else int(idx[hit[0]])


def drift_onset(values: np.ndarray, factor: float, share: float = 0.1, least: int = 3, width: int = 5,
                up: bool = True) -> int | None:
    """First index where the trailing rolling median of a positive series is beyond factor x (up) or 1/factor x
    (down) the median of its early window (the first `share` of finite values, at least `least`): a slow
    growth or decay the jump test does not see."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(v))
    if len(idx) < 2 * least:
        return None
    finite = v[idx]
    early = float(np.median(finite[:max(least, int(round(share * len(finite))))]))
    if not early > 0:
        return None
    smooth = rolling_median(finite, width, centered=False)
    flags = smooth > factor * early if up else smooth < early / factor
    hit = np.flatnonzero(flags)
    return int(idx[hit[0]]) if len(hit) else None


def forward_share(flags: np.ndarray, width: int) -> np.ndarray:
    """Share of True values in each index's forward window [i, i + width) (cut at the end of the series)."""
    f = np.concatenate([[0.0], np.cumsum(np.asarray(flags, dtype=np.float64))])
    i = np.arange(len(f) - 1)
    end = np.minimum(i + max(width, 1), len(f) - 1)
    return (f[end] - f[i]) / np.maximum(end - i, 1)


def held(flags: np.ndarray, width: int, share: float) -> np.ndarray:
    """Per index: is the noisy bool series mostly True from there on? The share of True is >= share over the
    `width` records from there and over everything from there to the end; odd records anywhere (the last ones
    too) do not break it, as they would a rule that every record or every rolling window from there be True."""
    flags = np.asarray(flags, dtype=bool)
    tail = np.cumsum(flags[::-1])[::-1] / np.arange(len(flags), 0, -1) if len(flags) else np.zeros(0)
    return (forward_share(flags, width) >= share) & (tail >= share)


def first_held(ok: np.ndarray, least: int) -> int | None:
    """The first index where ok is True with at least `least` records from there to the end, or None."""
    hit = np.flatnonzero(np.asarray(ok, dtype=bool)[:max(len(ok) - least + 1, 0)])
    return int(hit[0]) if len(hit) else None


def mean_shift(values: np.ndarray, lo: int, hi: int) -> int:
    """The index j in [lo, hi] (lo >= 1) that best splits a series into two levels: the maximum over j of
    sqrt(j (n - j) / n) x (mean after j - mean before j), the CUSUM statistic of one upward mean shift.
    Non-finite values count as 0."""
    x = np.where(np.isfinite(values), values, 0.0).astype(np.float64)
    n = len(x)
    lo, hi = max(1, lo), min(n - 1, hi)
    if n < 2 or hi < lo:
        return max(0, min(lo, n - 1))
    j = np.arange(lo, hi + 1)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    before = csum[j] / j
    after = (csum[n] - csum[j]) / (n - j)
    score = np.sqrt(j * (n - j) / n) * (after - before)
    return int(j[np.argmax(score)])


def lower_median(matrix: np.ndarray) -> np.ndarray:
    """Per column, the lower median of the finite rows of [ranks, steps] (with 2 ranks, the smaller value):
    a reference that one bad rank cannot pull."""
    m = np.asarray(matrix, dtype=np.float64)
    s = np.sort(np.where(np.isfinite(m), m, np.inf), axis=0)
    n = np.isfinite(m).sum(axis=0)
    pick = np.clip((n - 1) // 2, 0, None)
    out = s[pick, np.arange(m.shape[1])] if m.size else np.zeros(m.shape[1:])
    return np.where(n > 0, out, np.nan)


def disagreeing(values: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """For [ranks, steps] of one fingerprint, (columns where ranks differ, [ranks, steps] bool: rank differs from
    the column's majority value). Equal means |a - b| <= rtol * max(|a|, |b|) (rtol 0: bit-equal); a column with
    a non-finite value on some ranks only differs too."""
    v = np.asarray(values, dtype=np.float64)
    ref = v[0]
    with np.errstate(invalid="ignore"):
        close = (np.abs(v - ref) <= rtol * np.maximum(np.abs(v), np.abs(ref))) | (v == ref)
    close |= np.isnan(v) & np.isnan(ref)
    differs = ~close.all(axis=0)
    majority = close.sum(axis=0) * 2 > v.shape[0]
    odd = np.where(majority, ~close, close)  # the ranks away from the majority (ties: ranks unlike rank 0's)
    return differs, odd & differs
