"""What the check modules share: the Context a check reads the run through, and readers of recorded series."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tview.diagnose.findings import Finding
from tview.store.rank_summary import trend_arrays

STAY_SHARE, STAY_LEAST = 0.1, 3  # "stays": over the last 10% of the records (at least 3), to the end
HOLD_WINDOW = 19          # records after a rank's onset that must hold its level (the rank checks' window)
MAX_RANKS = 256           # per-rank scans (gradients, dead filters) read at most this many ranks; beyond, the loss
#                           and time checks read the rank summaries' trends


@dataclass
class Context:
    """One diagnosis: the open run, how finely to read it, the rank summaries, and what the checks before found
    (a later check may read an earlier one's findings: gradients stop before the first NaN)."""

    run: object
    max_points: int | None = None
    rank_summaries: dict | None = None
    found: dict[str, list[Finding]] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    def first(self, kind: str) -> Finding | None:
        """The earliest finding of a kind found so far."""
        got = [f for f in self.found.get(kind, []) if f.step is not None]
        return min(got, key=lambda f: f.step) if got else None

    def loss(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps, the mean loss over the ranks that recorded it at each step), read once per diagnosis."""
        if "loss" not in self._cache:
            self._cache["loss"] = mean_scalar(self.run, "loss", self.max_points)
        return self._cache["loss"]


def matrix(run, name: str, rank: int, max_points: int | None = None):
    """(steps, float64 [steps, layers] with NaN where not measured or not finite), or None if not recorded."""
    try:
        steps, m = run.stat_matrix(name, rank, max_points=max_points)
    except KeyError:
        return None
    return np.asarray(steps), np.ma.filled(np.ma.masked_invalid(m).astype(np.float64), np.nan)


def scalar(run, name: str, rank: int, max_points: int | None):
    """(steps, values) of a scalar on a rank, or None if that rank has none."""
    try:
        return run.scalar(name, rank, max_points=max_points)
    except KeyError:
        return None


def mean_scalar(run, name: str, max_points: int | None, ranks=None):
    """(steps, mean over the ranks that have the step) of a scalar over the first MAX_RANKS ranks, or None."""
    got = [scalar(run, name, r, max_points) for r in (run.ranks if ranks is None else ranks)[:MAX_RANKS]]
    got = [(np.asarray(s), np.asarray(v, dtype=np.float64)) for s, v in (x for x in got if x is not None)]
    if got and all(np.array_equal(s, got[0][0]) for s, _ in got):  # every rank on the same steps: one array
        if not len(got[0][0]):
            return None
        by_step = np.ascontiguousarray(np.stack([v for _, v in got]).T)  # each step's row summed as np.mean sums
        return got[0][0].astype(np.int64), by_step.mean(axis=1)  # a list: the same bits
    sums: dict[int, list[float]] = {}
    for steps, values in got:
        for s, v in zip(steps.tolist(), values.tolist()):
            sums.setdefault(s, []).append(v)
    if not sums:
        return None
    steps = np.asarray(sorted(sums), dtype=np.int64)
    return steps, np.asarray([np.mean(sums[s]) for s in steps.tolist()])


def on_steps(steps: np.ndarray, series: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """A (steps, values) series at the given steps, NaN where it has none."""
    out = np.full(len(steps), np.nan)
    if series is None:
        return out
    where = np.searchsorted(series[0], steps)
    where = np.clip(where, 0, max(len(series[0]) - 1, 0))
    if len(series[0]):
        hit = series[0][where] == steps
        out[hit] = np.asarray(series[1], dtype=np.float64)[where[hit]]
    return out


def param_layers(run) -> list[int]:
    return [i for i, info in enumerate(run.layer_info) if info.get("params", 1) and info.get("kind") != "activation"]


def is_filter_maker(info: dict) -> bool:
    t = str(info.get("type", ""))
    return t.startswith("Conv") or t == "Linear"


def is_conv(info: dict) -> bool:
    return str(info.get("type", "")).startswith("Conv")


def makers(run) -> list[int | None]:
    """Per layer, the index of the Conv or Linear layer whose filters or units make its channels (the nearest one
    at or before it), None before the first."""
    out, maker = [], None
    for i, info in enumerate(run.layer_info):
        if is_filter_maker(info):
            maker = i
        out.append(maker)
    return out


def conv_region(run) -> list[int]:
    """Layers whose outputs are feature maps of filters: from a Conv layer up to the next Conv or Linear layer."""
    return [i for i, maker in enumerate(makers(run)) if maker is not None and is_conv(run.layer_info[maker])]


def block(run, i: int) -> list[int]:
    """Layer i and the layers after it up to the next Conv or Linear layer (its norm and activation)."""
    out = [i]
    for j in range(i + 1, len(run.layers)):
        if is_filter_maker(run.layer_info[j]):
            break
        out.append(j)
    return out


def stay_rows(n: int) -> int:
    return max(STAY_LEAST, int(math.ceil(STAY_SHARE * n)))


def stuck_channels(flags: np.ndarray) -> dict[int, int]:
    """{channel: row where it got stuck} for the channels of bool [rows, C] that stay True over their final
    run of rows, that run covering at least the last 10% of the rows (and at least 3)."""
    flags = np.asarray(flags, dtype=bool)
    if flags.ndim != 2 or len(flags) < STAY_LEAST:
        return {}
    n = len(flags)
    off = ~flags
    start = np.where(off.any(axis=0), n - np.argmax(off[::-1], axis=0), 0)  # after each channel's last False
    stuck = flags[-1] & (n - start >= stay_rows(n))
    return {int(c): int(start[c]) for c in np.flatnonzero(stuck)}


def channel_rows(run, name, layer, rank, max_points):
    """(steps, [steps, C]) of a per-channel statistic of one layer, or None."""
    try:
        steps, v = run.stat(name, layer, rank, max_points=max_points)
    except KeyError:
        return None
    v = np.asarray(v, dtype=np.float64)
    return (np.asarray(steps), v) if v.ndim == 2 and len(steps) else None


def merge_ranks(per: dict[int, list[Finding]], n_ranks: int) -> list[Finding]:
    """Findings of one kind, layer and channels on every rank become one with rank None, at the earliest step."""
    seen: dict[tuple, list[Finding]] = {}
    for found in per.values():
        for f in found:
            seen.setdefault((f.kind, f.layer, tuple(f.channels)), []).append(f)
    out = []
    for group in seen.values():
        if len(group) == n_ranks and n_ranks > 1:
            f = min(group, key=lambda g: g.step if g.step is not None else -1)
            f.rank = None
            f.message += " (every rank)"
            out.append(f)
        else:
            out.extend(group)
    return out


def listed(channels) -> str:
    c = sorted(channels)
    return ", ".join(map(str, c[:12])) + (" ..." if len(c) > 12 else "")


def _trend(summary: dict | None, name: str):
    return trend_arrays(summary, name) if summary and summary.get("trend") else None


def aligned_scalar(run, name: str, max_points=None, rank_summaries: dict | None = None
                   ) -> tuple[np.ndarray, list[int], np.ndarray] | None:
    """(steps every rank has, ranks, [ranks, steps]) of a scalar, or None when fewer than 2 ranks have it. Beyond
    MAX_RANKS ranks, with rank_summaries, from their trends (every k-th recorded step, no shard read: a step found
    there is exact to k)."""
    trends = rank_summaries is not None and len(run.ranks) > MAX_RANKS
    series = {}
    for r in run.ranks:
        got = _trend(rank_summaries.get(r), name) if trends else scalar(run, name, r, max_points)
        if got is not None and len(got[0]):
            series[r] = got
    if len(series) < 2:
        return None
    common = common_steps([steps for steps, _ in series.values()])
    ranks = sorted(series)
    return common, ranks, np.stack([np.asarray(series[r][1], dtype=np.float64)[on(series[r][0], common)]
                                    for r in ranks])


def common_steps(step_arrays: list[np.ndarray]) -> np.ndarray:
    """The steps every one of the (ascending) step arrays holds; an array equal to the ones before costs no
    intersection (every rank of a run records the same steps, as a rule)."""
    common = np.asarray(step_arrays[0])
    for steps in step_arrays[1:]:
        if not np.array_equal(common, steps):
            common = np.intersect1d(common, steps)
    return common


def on(steps: np.ndarray, common: np.ndarray):
    """Index of the rows of `steps` (ascending) that are in `common` (a subset of them): all rows when equal."""
    return slice(None) if np.array_equal(steps, common) else np.isin(steps, common)


def stacked_on_common_steps(series: list) -> tuple[np.ndarray, np.ndarray] | None:
    """(the steps every rank's series has, [ranks, those steps] of their values) of per-rank (steps, values) series;
    None where a rank has none or fewer than 2 x STAY_LEAST steps are common."""
    if any(s is None for s in series):
        return None
    series = [_last_per_step(np.asarray(s), np.asarray(v)) for s, v in series]
    steps = common_steps([s for s, _ in series])
    if len(steps) < 2 * STAY_LEAST:
        return None
    return steps, np.stack([v[on(s, steps)] for s, v in series])


def earliest_onsets(layers: list[str], ranks: list, done: dict, layer_onsets) -> dict[int, tuple]:
    """{rank: (step, layer, *more)}: each rank's earliest onset over the layers, where layer_onsets(series, ranks)
    gives one layer's ({rank: step or (step, *more)}) from `series`, each rank's done[rank][layer] (None: none)."""
    out: dict[int, tuple] = {}
    if len(ranks) < 2:
        return out
    for layer in layers:
        for rank, found in layer_onsets([done.get(r, {}).get(layer) for r in ranks], ranks).items():
            step, *more = found if isinstance(found, tuple) else (found,)
            if rank not in out or step < out[rank][0]:
                out[rank] = (step, layer, *more)
    return out


def _last_per_step(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ascending steps, values) with each step once, its last record kept (a rank resumed with start_step= at an
    earlier step records some steps again)."""
    if len(steps) < 2 or np.all(np.diff(steps) > 0):
        return steps, values
    last = len(steps) - 1 - np.unique(steps[::-1], return_index=True)[1]
    return steps[last], values[last]
