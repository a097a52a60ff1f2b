"""A run's numbers as one long pandas DataFrame (step, rank, layer, statistic, channel, value)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from tview.errors import TviewError

COLUMNS = ("step", "rank", "layer", "statistic", "channel", "value")

Progress = Callable[[int, int, str], None]  # (done, total, what was just read)


def need_pandas():
    try:
        import pandas
    except ImportError:
        raise TviewError("a DataFrame needs pandas: pip install 'tview[export]'") from None
    return pandas


def _chosen(asked: Iterable[str] | None, known: Sequence, what: str, path: str) -> list:
    """`asked` checked against `known` (None: all of `known`), in the order asked."""
    if asked is None:
        return list(known)
    asked = [asked] if isinstance(asked, (str, int)) else list(asked)
    unknown = [a for a in asked if a not in known]
    if unknown:
        raise TviewError(f"{path}: no {what} {', '.join(map(repr, unknown))}; "
                         f"{what}s: {', '.join(map(str, known)) or 'none'}")
    return asked


class _Columns:
    """Column pieces gathered part by part, joined once at the end."""

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}

    def add(self, steps, rank: int, layer: str | None, statistic: str, values, channels=None):
        n = len(steps)
        self.parts["step"].append(np.asarray(steps, dtype=np.int64))
        self.parts["rank"].append(np.full(n, rank, dtype=np.int64))
        self.parts["layer"].append(np.full(n, layer, dtype=object))
        self.parts["statistic"].append(np.full(n, statistic, dtype=object))
        self.parts["channel"].append(np.full(n, -1, dtype=np.int64) if channels is None
                                     else np.asarray(channels, dtype=np.int64))
        self.parts["value"].append(np.asarray(values, dtype=np.float64))

    def frame(self):
        pd = need_pandas()
        dtypes = {"step": np.int64, "rank": np.int64, "layer": object, "statistic": object, "channel": np.int64,
                  "value": np.float64}
        joined = {c: np.concatenate(p) if p else np.zeros(0, dtype=dtypes[c]) for c, p in self.parts.items()}
        channel = joined.pop("channel")
        df = pd.DataFrame(joined)
        df.insert(4, "channel", pd.arrays.IntegerArray(np.maximum(channel, 0), channel < 0))
        return df


def _add_stat(cols: _Columns, run, name: str, layer: str, rank: int, max_points: int | None):
    """One statistic of one layer and rank; per-channel values [k, C] become k*C rows with their channel."""
    try:
        steps, values = run.stat(name, layer, rank, max_points=max_points)
    except KeyError:  # not recorded for this layer (a per-channel statistic of a layer without channels)
        return
    values = np.asarray(values)
    if values.ndim == 2:
        k, c = values.shape
        cols.add(np.repeat(steps, c), rank, layer, name, values.reshape(-1), np.tile(np.arange(c), k))
    else:
        cols.add(steps, rank, layer, name, values)


def _reads(ranks: list[int], scalar_names: dict, stat_names: list[str], layers: list[str]) -> list[tuple]:
    """(rank, name, None for a scalar or the layers of a statistic) in the frame's order: rank by rank, scalars
    first."""
    return [read for rank in ranks
            for read in [(rank, n, None) for n in scalar_names[rank]] + [(rank, n, layers) for n in stat_names]]


def frame(run, stats: Iterable[str] | None = None, layers: Iterable[str] | None = None,
          ranks: Iterable[int] | None = None, scalars: Iterable[str] | None = None,
          max_points: int | None = None, *, progress: Progress | None = None):
    """The numbers of `run` (a `tview.Run`) as a long pandas DataFrame, one row per measured value.

    Columns: `step` (int64), `rank` (int64), `layer` (str; None for scalars), `statistic` (str: a
    statistic such as "grad_norm", or a scalar such as "loss"), `channel` (nullable Int64: the
    output channel of a per-channel statistic such as "act_channel_mean", <NA> otherwise) and
    `value` (float64). Only measured values are rows (as `run.stat`/`run.scalar` return them), so
    NaN in `value` is a NaN the model produced. Rows come rank by rank, scalars first, then each
    statistic layer by layer, steps ascending.

    `stats`: per-layer and per-channel statistic names (`run.stat_names()`,
    `run.channel_stat_names()`); `scalars`: scalar names (`run.scalar_names(rank)`). When neither
    is given, all of both; when only one is given, only that kind. `layers` narrows the statistics
    (not the scalars); `ranks` defaults to the readable ranks. `max_points` downsamples each
    series on read as `run.stat` does. An unknown name, layer or rank raises TviewError naming it.
    `progress(done, total, what)` is called after each (rank, statistic or scalar) read.
    """
    if stats is not None and scalars is None:
        scalars = []
    elif scalars is not None and stats is None:
        stats = []
    stat_names = _chosen(stats, run.stat_names() + run.channel_stat_names(), "statistic", run.path)
    layer_names = _chosen(layers, run.layers, "layer", run.path)
    rank_list = _chosen(ranks, run.ranks, "readable rank", run.path)
    scalar_names = {r: _chosen(scalars, run.scalar_names(r), f"scalar of rank {r}", run.path) for r in rank_list}
    cols = _Columns()
    reads = _reads(rank_list, scalar_names, stat_names, layer_names)
    for done, (rank, name, of_layers) in enumerate(reads, 1):
        if of_layers is None:
            steps, values = run.scalar(name, rank, max_points=max_points)
            cols.add(steps, rank, None, name, values)
        else:
            for layer in of_layers:
                _add_stat(cols, run, name, layer, rank, max_points)
        if progress:
            progress(done, len(reads), f"rank {rank} {name}")
    return cols.frame()
