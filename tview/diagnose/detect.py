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
    if len(idx) <= least:
        return None
    k = _first(_jump_flags(v[idx][None], factor, history, least, sustain, up, level))[0]
    return None if k is None else int(idx[k])


def rise_start(values: np.ndarray, k: int, factor: float, history: int = 20) -> int:
    """Where the rise that jump_onset found at index k began: walking back from k (at most `history` records), the
    earliest index of the values in a row before k that are each above factor x the median of the `history` values
    before it (a ramp that crosses jump_onset's higher factor a few records after it left its level is dated where
    it left it, not where it crossed)."""
    v = np.asarray(values, dtype=np.float64)
    start = k
    while start > max(k - history, 0):
        before = v[max(start - 1 - history, 0):start - 1]
        before = before[np.isfinite(before)]
        if not len(before) or not v[start - 1] > factor * nanmedian(before) > 0:
            break
        start -= 1
    return start


def jump_onsets(rows: np.ndarray, factor: float, history: int = 20, least: int = 5, sustain: int = 2,
                up: bool = True, level: str = "median") -> list[int | None]:
    """jump_onset of each row of [series, steps]: the rows with no non-finite value judged in one array pass
    (all the layers of a rank at once), the others one by one."""
    m = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    whole = np.isfinite(m).all(axis=1) if m.shape[1] > least else np.zeros(len(m), bool)
    out = [None if whole[i] else jump_onset(m[i], factor, history, least, sustain, up, level) for i in range(len(m))]
    if whole.any():
        for i, k in zip(np.flatnonzero(whole), _first(_jump_flags(m[whole], factor, history, least, sustain, up,
                                                                   level))):
            out[i] = k
    return out


def _first(flags: np.ndarray) -> list[int | None]:
    """Per row of bool [series, steps], the index of its first True (None where none)."""
    hit = flags.any(axis=1)
    first = flags.argmax(axis=1)
    return [int(k) if h else None for h, k in zip(hit, first)]


def _jump_flags(finite: np.ndarray, factor: float, history: int, least: int, sustain: int, up: bool,
                level: str) -> np.ndarray:
    """jump_onset's test at every index of each row of finite values [series, n]: bool [series, n]."""
    k, n = finite.shape
    padded = np.concatenate([np.full((k, history), np.nan), finite], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, history, axis=1)[:, :n]
    ahead = np.concatenate([finite, np.full((k, sustain), np.nan)], axis=1)
    ahead = np.lib.stride_tricks.sliding_window_view(ahead, sustain, axis=1)[:, :n]  # a value and sustain-1 after it
    base = _recent_level(padded, windows, finite, factor, up, level)
    with np.errstate(invalid="ignore"):
        beyond = (ahead > factor * base[..., None]) if up else (ahead < base[..., None] / factor)
    # every one of the next `sustain` values beyond the level before the first (fewer at the end of the series)
    flags = (base > 0) & (beyond | np.isnan(ahead)).all(axis=2) & beyond[..., 0]
    flags[:, :least] = False
    return flags


def _recent_level(padded: np.ndarray, windows: np.ndarray, finite: np.ndarray, factor: float, up: bool,
                  level: str) -> np.ndarray:
    """The level of each window [series, n, history] of padded (NaN before the values) that jump_onset compares a
    value with. The median is taken only where the value can be beyond it (above factor x the window's least, or
    below its largest / factor: the median lies between them), NaN elsewhere (no jump there either way): a sort
    per window is most of the cost."""
    n, history = finite.shape[1], windows.shape[2]
    with np.errstate(invalid="ignore"):
        if level == "max":
            return window_reduce(np.fmax, padded, history)[:, :n]
        if up:
            maybe = finite > factor * window_reduce(np.fmin, padded, history)[:, :n]
        else:
            maybe = finite < window_reduce(np.fmax, padded, history)[:, :n] / factor
    base = np.full(finite.shape, np.nan)
    if maybe.any():
        base[maybe] = nanmedian(windows[maybe], axis=1)
    return base


def window_reduce(fn, x: np.ndarray, width: int) -> np.ndarray:
    """fn (np.fmax or np.fmin: NaN ignored) over x[..., j:j + width] for every j, along the last axis, by doubling
    (log2(width) passes over x, not width): the same values as fn.reduce over sliding windows."""
    n = x.shape[-1] - width + 1
    out, offset, size, block = None, 0, 1, x
    while width:
        if width & 1:
            part = block[..., offset:offset + n]
            out = part if out is None else fn(out, part)
            offset += size
        width >>= 1
        if width:
            block, size = fn(block[..., :-size], block[..., size:]), size * 2  # block[j]: over x[j:j + 2 size]
    return out


def drift_onset(values: np.ndarray, factor: float, share: float = 0.1, least: int = 3, width: int = 5,
                up: bool = True) -> int | None:
    """First index where the trailing rolling median of a positive series is beyond factor x (up) or 1/factor x
    (down) the median of its early window (the first `share` of finite values, at least `least`): a slow
    growth or decay the jump test does not see."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(v))
    if len(idx) < 2 * least:
        return None
    k = _drift_firsts(v[idx][None], factor, share, least, width, up)[0]
    return None if k is None else int(idx[k])


def drift_onsets(rows: np.ndarray, factor: float, share: float = 0.1, least: int = 3, width: int = 5,
                 up: bool = True) -> list[int | None]:
    """drift_onset of each row of [series, steps]: the rows with no non-finite value judged in one array pass."""
    m = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    whole = np.isfinite(m).all(axis=1) if m.shape[1] >= 2 * least else np.zeros(len(m), bool)
    out = [None if whole[i] else drift_onset(m[i], factor, share, least, width, up) for i in range(len(m))]
    if whole.any():
        for i, k in zip(np.flatnonzero(whole), _drift_firsts(m[whole], factor, share, least, width, up)):
            out[i] = k
    return out


def _drift_firsts(finite: np.ndarray, factor: float, share: float, least: int, width: int, up: bool
                  ) -> list[int | None]:
    """drift_onset of each row of finite values [series, n] (n >= 2 * least). The trailing median is taken only
    where it can be beyond the bound (the window's largest above it, or its least below it)."""
    k, n = finite.shape
    early = np.median(finite[:, :max(least, int(round(share * n)))], axis=1)
    bound = factor * early if up else early / factor
    padded = np.concatenate([np.full((k, width - 1), np.nan), finite], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=1)[:, :n]
    with np.errstate(invalid="ignore"):
        maybe = (window_reduce(np.fmax, padded, width) > bound[:, None]) if up else \
            (window_reduce(np.fmin, padded, width) < bound[:, None])
    maybe &= (early > 0)[:, None]
    flags = np.zeros((k, n), dtype=bool)
    if maybe.any():
        smooth = nanmedian(windows[maybe], axis=1)
        flags[maybe] = smooth > bound[np.nonzero(maybe)[0]] if up else smooth < bound[np.nonzero(maybe)[0]]
    return _first(flags)


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


def median_without(pool: np.ndarray, taken: np.ndarray) -> float:
    """nanmedian of a pool of values less some of them (the median of the other ranks', for one rank after
    another): pool, the pool's finite values sorted; taken, values of the pool to leave out. The two middle values
    found by bisection on counts: no sort of what is left."""
    taken = np.sort(taken[np.isfinite(taken)])
    n = len(pool) - len(taken)
    if n <= 0:
        return float("nan")

    def kth(j: int) -> float:  # the j-th smallest (from 0) of the pool less taken
        lo, hi = 0, len(pool) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            x = pool[mid]  # the arrays' own searchsorted: a quarter of numpy's function's cost
            left = pool.searchsorted(x, "right") - taken.searchsorted(x, "right")
            lo, hi = (lo, mid) if left > j else (mid + 1, hi)
        return pool[lo]
    return float((kth((n - 1) // 2) + kth(n // 2)) / 2)


def finite_sorted(values: np.ndarray) -> np.ndarray:
    """The finite values of an array, sorted (median_without's pool)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return np.sort(v[np.isfinite(v)])


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
    close = v == ref  # with rtol 0, |a - b| <= 0 adds nothing to a == b
    if rtol:
        with np.errstate(invalid="ignore"):
            close |= np.abs(v - ref) <= rtol * np.maximum(np.abs(v), np.abs(ref))
    close |= np.isnan(v) & np.isnan(ref)
    differs = ~close.all(axis=0)
    majority = close.sum(axis=0) * 2 > v.shape[0]
    odd = np.where(majority, ~close, close)  # the ranks away from the majority (ties: ranks unlike rank 0's)
    return differs, odd & differs
