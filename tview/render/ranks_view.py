"""Views across many ranks as plain arrays: quantile bands, standout ranks, the ranks table worst first, paged."""

from __future__ import annotations

import math
import warnings

import numpy as np

BANDS = (("min", 0.0), ("5%", 5.0), ("median", 50.0), ("95%", 95.0), ("max", 100.0))
LINES_UP_TO = 8      # up to this many ranks a figure draws one line per rank; beyond, quantile bands
PAGE_SIZE = 16       # rows of the ranks table per page
DIVERGE_LEAST = 3    # "most divergent" needs a majority to diverge from
DIVERGE_MARGIN = 2.0  # ... and to run this many times further from it than the median rank does
DIVERGE_STEPS = 250   # steps (evenly strided) a divergence score looks at
SLOW_MARGIN = 1.05    # "slowest" only if its median step time is 5% above the median rank's
TIME_SUFFIX = "_time"  # a scalar named like this is a duration (step_time, data_time, ...): larger is slower
SEVERITY = {"unreadable": 0, "stopped": 1, "no steps yet": 2, "live": 5, "closed": 5}


def quantile_bands(values: np.ndarray) -> dict[str, np.ndarray]:
    """Per step (column) of values [ranks, steps]: min, 5%, median, 95%, max over the ranks that have a
    finite value there; NaN where none has."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"quantile_bands wants values [ranks, steps], got shape {v.shape}")
    v = np.where(np.isfinite(v), v, np.nan)
    if v.shape[1] == 0 or v.shape[0] == 0:
        return {name: np.full(v.shape[1], np.nan) for name, _ in BANDS}
    percentile = np.percentile if not np.isnan(v).any() else np.nanpercentile  # the first: 5x faster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, said by the result itself
        q = percentile(v, [p for _, p in BANDS], axis=0)
    return {name: q[i] for i, (name, _) in enumerate(BANDS)}


def strided_columns(n: int, most: int) -> slice:
    """Every k-th of n columns, at most `most` of them."""
    return slice(None, None, max(1, -(-n // most)))


def divergence(values: np.ndarray) -> np.ndarray:
    """Per rank, how far it runs from the others: the mean over steps (at most DIVERGE_STEPS of them) of
    |value - median rank| divided by the median such distance (a robust z-score); NaN for a rank with no
    finite value. Needs 3+ ranks."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, np.nan)[:, strided_columns(v.shape[1], DIVERGE_STEPS)]
    if v.shape[0] < DIVERGE_LEAST or v.shape[1] == 0:
        return np.full(v.shape[0], np.nan)
    median = np.median if not np.isnan(v).any() else np.nanmedian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        dist = np.abs(v - median(v, axis=0))
        scale = median(dist, axis=0)
        tiny = 1e-12 * np.nanmax(np.abs(v), axis=0)
        z = dist / np.where(scale > tiny, scale, np.nan)
        return np.nanmean(z, axis=1)


def _argmax_finite(scores: np.ndarray) -> int | None:
    s = np.asarray(scores, dtype=np.float64)
    return int(np.nanargmax(s)) if np.isfinite(s).any() else None


def slowest(step_time: dict[int, float | None]) -> int | None:
    """The rank with the largest median step time, if 2+ ranks have one and it is SLOW_MARGIN above the median's."""
    times = {r: t for r, t in step_time.items() if t is not None and math.isfinite(t)}
    if len(times) < 2:
        return None
    rank = max(times, key=lambda r: (times[r], -r))
    return rank if times[rank] > SLOW_MARGIN * float(np.median(list(times.values()))) else None


def most_divergent(values: np.ndarray) -> int | None:
    """Row index of the rank that runs furthest from the others, if it does so DIVERGE_MARGIN times more than
    the median rank (among ranks that only differ by noise, none is named)."""
    scores = divergence(values)
    i = _argmax_finite(scores)
    if i is None:
        return None
    typical = float(np.nanmedian(scores))
    return i if scores[i] > DIVERGE_MARGIN * typical else None


def slowest_by(step_time: dict[int, float | None], other_times: dict[str, dict[int, float | None]] | None = None
               ) -> tuple[int, str] | None:
    """(rank, why) of the slowest rank by step time; if none stands out (under DDP the all-reduce makes every
    rank's step take as long as the slowest's), by the first other duration scalar in which one does (e.g. the
    time a rank spends loading its batch): why is then 'slowest by data_time'. Waits (wait_time, cpu_wait_time)
    are not read: under DDP the rank that waits longest for the others is the fastest, not the slowest."""
    rank = slowest(step_time)
    if rank is not None:
        return rank, "slowest"
    for name, times in (other_times or {}).items():
        if "wait" in name:
            continue
        rank = slowest(times)
        if rank is not None:
            return rank, f"slowest by {name}"
    return None


def standouts(ranks: list[int], values: np.ndarray | None = None, step_time: dict[int, float] | None = None,
              first_bad: dict[int, int | None] | None = None,
              other_times: dict[str, dict[int, float | None]] | None = None) -> dict[int, list[str]]:
    """The few ranks worth naming, rank -> why: 'slowest' (see slowest_by()), 'most divergent' (values [ranks,
    steps] in `ranks` order; see most_divergent()), 'first NaN' (earliest first non-finite step; first_bad: rank ->
    step, or (step, place in the step): at one step, the rank whose activations went first). At most three ranks; a
    rank may carry several reasons."""
    named: dict[int, list[str]] = {}
    slow = slowest_by(step_time or {}, other_times)
    if slow is not None:
        named.setdefault(slow[0], []).append(slow[1])
    if values is not None and len(ranks):
        i = most_divergent(values)
        if i is not None:
            named.setdefault(ranks[i], []).append("most divergent")
    bad = {r: s for r, s in (first_bad or {}).items() if s is not None}
    if bad:
        named.setdefault(min(bad, key=lambda r: (bad[r], r)), []).append("first NaN")
    return named


def standout_label(rank: int, reasons: list[str]) -> str:
    return f"rank {rank} ({', '.join(reasons)})" if reasons else f"rank {rank}"


def badness(row: dict, furthest: int | None) -> tuple:
    """Sort key, worst first: unreadable, stopped, no steps; then NaN earliest, lag, slow, dropped records."""
    lag = (furthest or 0) - row["last_step"] if row.get("last_step") is not None else 0
    nan_at = row.get("first_nan")
    step_time = row.get("step_time")
    return (SEVERITY.get(row.get("state"), 4),
            0 if nan_at is not None else 1, row.get("first_nan_key") or (nan_at if nan_at is not None else 0, 0),
            -lag, -(step_time if step_time is not None and math.isfinite(step_time) else -1.0),
            -(row.get("dropped") or 0), row["rank"])


def worst_first(rows: list[dict]) -> list[dict]:
    """The ranks table's rows (dicts with rank, state, last_step; optional first_nan, step_time, dropped),
    worst first; among equals, by rank."""
    furthest = max((r["last_step"] for r in rows if r.get("last_step") is not None), default=None)
    return sorted(rows, key=lambda r: badness(r, furthest))


def page_count(n_rows: int, size: int = PAGE_SIZE) -> int:
    return max(1, -(-n_rows // size))


def page_of(rows: list[dict], page: int, size: int = PAGE_SIZE) -> tuple[list[dict], int]:
    """Rows of page `page` (0-based, clamped into range) and the page actually shown."""
    page = min(max(int(page or 0), 0), page_count(len(rows), size) - 1)
    return rows[page * size:(page + 1) * size], page


def page_with_rank(rows: list[dict], rank: int | None, size: int = PAGE_SIZE) -> int | None:
    """The page on which `rank` stands in rows, None if it is not there."""
    for i, row in enumerate(rows):
        if row["rank"] == rank:
            return i // size
    return None


def parse_rank(text, ranks: list[int] | None = None) -> int | None:
    """A rank from what a user typed or a URL held ('7', 7, ' 7 '); None if empty, not a whole number,
    or (when `ranks` is given) not one of them."""
    if text is None or isinstance(text, bool):
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    if not value.is_integer() or value < 0:
        return None
    rank = int(value)
    return rank if ranks is None or rank in ranks else None


def rank_from_query(search: str | None) -> int | None:
    """`?rank=N` in the address focuses rank N (a link can be shared)."""
    from urllib.parse import parse_qs
    asked = parse_qs((search or "").lstrip("?")).get("rank")
    return parse_rank(asked[0]) if asked else None


def align_to_grid(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several ranks' downsampled (steps, values) on one step grid (the steps of the series with the most
    recorded steps): each rank's latest value at or before a grid step, held until that rank's next recorded step
    (a rank recording one step in 8 under a budget shows on every grid step), and past its last one for one grid
    interval or its own last interval, whichever is longer. Returns (steps, values [ranks, steps]), NaN where a
    rank has no value."""
    longest = max(series, key=lambda sv: (sv[0][-1] if len(sv[0]) else -1, len(sv[0])), default=None)
    if longest is None or not len(longest[0]):
        return np.zeros(0, dtype=np.int64), np.full((len(series), 0), np.nan)
    grid = np.asarray(longest[0], dtype=np.int64)
    gap = np.diff(grid, prepend=grid[0] - (grid[1] - grid[0] if len(grid) > 1 else 1))  # first: the next interval
    out = np.full((len(series), len(grid)), np.nan)
    for i, (steps, values) in enumerate(series):
        steps = np.asarray(steps)
        if not len(steps):
            continue
        at = np.searchsorted(steps, grid, side="right") - 1
        own = np.diff(steps, append=steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1))  # to its next
        ok = (at >= 0) & (grid - steps[np.maximum(at, 0)] < np.maximum(np.maximum(gap, 1), own[np.maximum(at, 0)]))
        out[i, ok] = np.asarray(values, dtype=np.float64)[at[ok]]
    return grid, out
