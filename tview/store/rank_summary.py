"""Per-rank summaries: a small JSON file beside each shard, rewritten at every flush, from which a reader
learns every rank's state and trend (1024 ranks: 1024 small files, no HDF5 opened). Written after the shard's
own flush and stamped with the shard's size and modification time then: a summary whose stamp differs from the
shard on disk (a writer killed in between) is not trusted.

`rank-NNNNN.summary.json` holds the rank's recorded steps, first and last step and wall time, whether it
closed cleanly, records dropped, where NaN/Inf first appeared, and a trend: the loss, the durations
(step_time, busy_time, ...), examples/s and whole-network numbers (gradient and weight norms over all
layers, the sum of all weights) on every k-th recorded step, k a power of two that doubles as the run grows,
so each series keeps between TREND_POINTS and 2 * TREND_POINTS - 1 points. It is derived data: a reader
that finds it missing, unreadable or older than its shard computes the same summary from the shard.
JSON as Python writes it (NaN and Infinity as bare tokens).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from tview.store import schema, summary_text
from tview.store.summary_text import series_lengths

SUMMARY_VERSION = 1
SUFFIX = ".summary.json"
TREND_POINTS = 64
WHOLE_NETWORK = {"grad_norm": "norm", "local_grad_norm": "norm", "weight_norm": "norm", "weight_sum": "sum"}
EXACT = ("weight_sum",)  # kept at full precision (compared between replicas); others at 7 digits
_NOT_DURATIONS = ("wall_time",)


def summary_path(shard_path: str) -> str:
    """rank-00003.h5 -> rank-00003.summary.json"""
    root, _ = os.path.splitext(shard_path)
    return root + SUFFIX


def trend_scalar(name: str) -> bool:
    """Scalars a trend keeps: the loss, examples/s and durations (names ending in _time)."""
    return name in ("loss", "examples_per_sec") or (name.endswith("_time") and name not in _NOT_DURATIONS)


def stride_for(rows: int) -> int:
    """The power of two k such that every k-th of `rows` rows makes at most 2 * TREND_POINTS - 1 points."""
    k = 1
    while -(-rows // k) > 2 * TREND_POINTS - 1:
        k *= 2
    return k


def whole_network(name: str, values: np.ndarray) -> np.ndarray:
    """Per row of per-layer values [rows, layers]: the norm over all layers (for *_norm), or their sum;
    NaN layers (not measured) are left out, NaN where no layer has a value. Inf stays Inf."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    present = ~np.isnan(v)
    if WHOLE_NETWORK.get(name) == "norm":
        out = np.sqrt(np.where(present, v * v, 0.0).sum(axis=1))
    else:
        out = np.where(present, v, 0.0).sum(axis=1)
    return np.where(present.any(axis=1), out, np.nan)


class Trend:
    """Every k-th row of a growing series (k doubling as rows come), bounded whatever the run's length."""

    def __init__(self):
        self.rows = 0
        self.stride = 1
        self.index = np.zeros(0, dtype=np.int64)
        self.step = np.zeros(0, dtype=np.int64)
        self.wall = np.zeros(0)
        self.series: dict[str, np.ndarray] = {}

    def extend(self, steps, walls, columns: dict[str, np.ndarray]):
        """Append len(steps) rows; `columns`: name -> values per row (NaN: not there). A name seen for
        the first time holds NaN on the rows kept before it."""
        n = len(steps)
        index = self.rows + np.arange(n, dtype=np.int64)
        self.rows += n
        keep = index % self.stride == 0
        for name in columns:
            self.series.setdefault(name, np.full(len(self.index), np.nan))
        for name, old in self.series.items():
            new = np.asarray(columns[name], dtype=np.float64)[keep] if name in columns else np.full(keep.sum(), np.nan)
            self.series[name] = np.concatenate([old, new if name in EXACT else _digits7(new)])
        self.index = np.concatenate([self.index, index[keep]])
        self.step = np.concatenate([self.step, np.asarray(steps, dtype=np.int64)[keep]])
        self.wall = np.concatenate([self.wall, np.asarray(walls, dtype=np.float64)[keep]])
        self._thin()

    def _thin(self):
        stride = stride_for(self.rows)
        if stride == self.stride:
            return
        self.stride = stride
        keep = self.index % stride == 0
        self.index, self.step, self.wall = self.index[keep], self.step[keep], self.wall[keep]
        self.series = {name: v[keep] for name, v in self.series.items()}

    def keep_digits(self) -> Trend:
        """Round the series to the digits a summary keeps (a trend rebuilt from a shard, before it is extended)."""
        self.series = {name: v if name in EXACT else _digits7(v) for name, v in self.series.items()}
        return self

    def as_json(self) -> dict:
        out = {"stride": self.stride, "step": self.step.tolist(), "wall_time": self.wall.tolist()}
        for name, v in self.series.items():
            out[name] = v.tolist()  # rounded as they came (extend): each point once, not at every flush
        return out


def _digits7(values: np.ndarray) -> np.ndarray:
    """Values at the 7 significant digits a summary keeps (the JSON text is then as short as the digits)."""
    return np.array([float(f"{x:.7g}") for x in values.tolist()], dtype=np.float64)


def first_nonfinite_map(first: dict[str, np.ndarray], layers: list[str], scalar_names: list[str],
                        reads: dict[str, str]) -> dict[str, dict]:
    """Where NaN/Inf first appeared, from status/first_nonfinite's arrays (table -> first step per layer, or per
    scalar column for 'scalars'; -1: never): {"layers": {layer: step}, "scalars": {name: step},
    "tensors": {what the table reads: {layer: step}}}."""
    out: dict[str, dict] = {"layers": {}, "scalars": {}, "tensors": {}}
    for table, steps in first.items():
        if table == schema.TABLE_SCALARS:
            out["scalars"] = {scalar_names[i]: int(s) for i, s in enumerate(steps[:len(scalar_names)]) if s >= 0}
            continue
        tensor = out["tensors"].setdefault(reads[table], {}) if table in reads else {}
        for i, s in enumerate(steps[:len(layers)]):
            if s >= 0:
                layer = layers[i]
                tensor[layer] = min(int(s), tensor.get(layer, int(s)))
                out["layers"][layer] = min(int(s), out["layers"].get(layer, int(s)))
    return out


def summary_dict(rank: int, world_size: int, trend: Trend, last: tuple | None, first_wall: float | None,
                 closed: bool, dropped: int, first_nonfinite: dict) -> dict:
    """The JSON object of a summary. last: (step, wall time) of the last recorded row, None before any."""
    return {"tview_summary_version": SUMMARY_VERSION, "rank": int(rank), "world_size": int(world_size),
            "steps": int(trend.rows), "first_step": int(trend.step[0]) if len(trend.step) else None,
            "last_step": None if last is None else int(last[0]), "first_wall": first_wall,
            "last_wall": None if last is None else float(last[1]), "closed": bool(closed), "dropped": int(dropped),
            "written_unix": time.time(), "first_nonfinite": first_nonfinite, "trend": trend.as_json()}


def shard_stamp(shard_path: str) -> list[int]:
    """[size, mtime in ns] of a shard: a summary records the stamp of the shard it was made from."""
    st = os.stat(shard_path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def write_summary(shard_path: str, summary: dict) -> None:
    """Replace the shard's summary atomically (readers see the old one or the new one, never half), stamped
    with the shard's size and modification time as they are now (call it after the shard's last write)."""
    path = summary_path(shard_path)
    tmp = f"{path}.tmp{os.getpid()}"
    text = json.dumps({**summary, "shard_stamp": shard_stamp(shard_path)}, separators=(",", ":"))  # C encoder
    with open(tmp, "w") as f:  # (json.dump to a file runs the pure-Python one: 5x the time)
        f.write(text)
    os.replace(tmp, path)


def _valid(summary, rank: int) -> bool:
    if not isinstance(summary, dict) or summary.get("tview_summary_version") != SUMMARY_VERSION:
        return False
    trend = summary.get("trend")
    if summary.get("rank") != rank or not isinstance(trend, Mapping) or "step" not in trend:
        return False
    lengths = series_lengths(trend)
    return lengths["step"] is not None and all(n == lengths["step"] for k, n in lengths.items() if k != "stride")


def read_summary(shard_path: str, rank: int) -> dict | None:
    """The shard's summary, or None when it is missing, unreadable, not this rank's, or made from another state
    of the shard than the one on disk (a writer killed between its flush and the summary): then the caller
    reads the shard."""
    try:
        with open(summary_path(shard_path), "rb") as f:
            text = f.read(4 * 2**20 + 1)
        if len(text) > 4 * 2**20:
            return None
        summary = summary_text.loads(text.decode())
        if not _valid(summary, rank) or summary.get("shard_stamp") != shard_stamp(shard_path):
            return None
    except (OSError, ValueError, RecursionError):
        return None
    return summary


ReadRows = Callable[[str, str, slice], tuple]  # (table, column, rows) -> (steps, values)


def trend_from_rows(rows: int, read: ReadRows, scalar_names: list[str], tables: dict[str, schema.TableSpec],
                    table_rows: dict[str, int]) -> Trend:
    """The trend a writer would have kept, from a shard's tables (every k-th row of rows recorded steps)."""
    trend = Trend()
    if rows == 0:
        return trend
    k = stride_for(rows)
    sel = slice(0, rows, k)
    steps, walls = read(schema.TABLE_SCALARS, "wall_time", sel)
    _, values = read(schema.TABLE_SCALARS, "values", sel)
    _, measured = read(schema.TABLE_SCALARS, "measured", sel)
    columns = {name: np.where(measured[:, i] > 0, values[:, i], np.nan)
               for i, name in enumerate(scalar_names) if trend_scalar(name)}
    for table, spec in tables.items():
        names = [c.name for c in spec.columns if c.name in WHOLE_NETWORK and c.kind == schema.LAYER]
        if names and table_rows.get(table):
            columns.update(_table_trends(read, table, names, table_rows[table], steps))
    trend.rows, trend.stride = rows, k
    trend.index = np.arange(0, rows, k, dtype=np.int64)[:len(steps)]
    trend.step, trend.wall = np.asarray(steps, dtype=np.int64), np.asarray(walls, dtype=np.float64)
    trend.series = {name: np.asarray(v, dtype=np.float64) for name, v in columns.items()}
    return trend.keep_digits()


def _table_trends(read: ReadRows, table: str, names: list[str], n: int, steps: np.ndarray) -> dict[str, np.ndarray]:
    """Whole-network values of a table's columns at `steps` (NaN where the table has no row at that step): the rows
    that hold those steps found in the table's step column (a table may lack a step's row: gradients left out of a
    step), read as one strided slice where they are evenly spaced (the usual case), else one by one."""
    at, _ = read(table, schema.STEP, slice(0, n))
    pos = np.searchsorted(at, steps)
    hit = pos < len(at)
    hit[hit] = at[pos[hit]] == steps[hit]
    rows, out = pos[hit], {name: np.full(len(steps), np.nan) for name in names}
    if not len(rows):
        return out
    gaps = np.unique(np.diff(rows))
    sels = [slice(int(rows[0]), int(rows[-1]) + 1, int(gaps[0]) if len(gaps) else 1)] if len(gaps) <= 1 \
        else [slice(int(r), int(r) + 1) for r in rows]
    measured = np.concatenate([read(table, "measured", sel)[1] for sel in sels])
    for name in names:
        values = np.concatenate([read(table, name, sel)[1] for sel in sels])
        out[name][hit] = whole_network(name, np.where(measured > 0, values, np.nan))
    return out


def trend_arrays(summary: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one trend series of a summary at the points where it has a value. A trend keeps no
    measured mask, so a NaN point is left out (where NaN/Inf first appeared is in first_nonfinite, exactly)."""
    trend = summary["trend"]
    if name not in trend:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    steps = np.asarray(trend["step"], dtype=np.int64)
    values = np.asarray(trend[name], dtype=np.float64)
    present = ~np.isnan(values)
    return steps[present], values[present]


WITHIN_STEP = {"activation": 0, "loss": 1, "local_gradient": 2, "gradient": 3, "weight": 4}  # the order a step makes


def first_nonfinite_key(where: dict | None) -> tuple[int, int] | None:
    """(first step, place in the step) of a rank's first NaN/Inf, from its first_nonfinite map: at one step, a rank
    whose activations (or loss) went first made it; one whose gradients did had them from the all-reduce, from the
    other. None when there was none."""
    step = first_nonfinite_step(where)
    if step is None:
        return None
    kinds = [k for k, layers in where.get("tensors", {}).items() if step in layers.values()]
    kinds += ["loss"] if where.get("scalars", {}).get("loss") == step else []
    return step, min((WITHIN_STEP.get(k, len(WITHIN_STEP)) for k in kinds), default=len(WITHIN_STEP))


def first_nonfinite_step(where: dict | None) -> int | None:
    """The first step with NaN/Inf anywhere (a layer or a scalar) of a rank's first_nonfinite map (what
    first_nonfinite_map makes); None when there was none. The one place the onset is computed."""
    if not where:
        return None
    steps = list(where.get("layers", {}).values()) + list(where.get("scalars", {}).values())
    return min(steps) if steps else None


@dataclass(frozen=True)
class RankSummary:
    """What a reader knows of one rank without reading its shard: recorded steps, first and last step and wall
    time, whether it closed cleanly, records dropped, where NaN/Inf first appeared (first_nonfinite_map's form),
    the trend (Trend.as_json's form, or numpy arrays once compacted) and `problem`: why the rank cannot be read
    (None when it can; then it has no trend). Item access (`s["steps"]`, `s.get(...)`) reads the same fields, for
    code written when summaries were dicts."""

    rank: int
    steps: int = 0
    first_step: int | None = None
    last_step: int | None = None
    first_wall: float | None = None
    last_wall: float | None = None
    closed: bool = False
    dropped: int = 0
    first_nonfinite: dict | None = None
    trend: dict | None = None
    problem: str | None = None
    world_size: int | None = None
    written_unix: float | None = None
    shard_stamp: list | None = None

    @classmethod
    def from_dict(cls, summary: dict) -> RankSummary:
        """From a summary's JSON object (or a RankSummary's fields as a dict); keys it does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in summary.items() if k in known})

    @classmethod
    def unreadable(cls, rank: int, problem: str) -> RankSummary:
        return cls(rank=rank, problem=problem)

    def first_nonfinite_key(self) -> tuple[int, int] | None:
        return first_nonfinite_key(self.first_nonfinite)

    def first_nonfinite_step(self) -> int | None:
        """The first step with NaN/Inf on this rank, in a layer or a scalar (exact: the writer keeps it)."""
        return first_nonfinite_step(self.first_nonfinite)

    @property
    def wall_seconds(self) -> float | None:
        """Wall time from the first recorded step to the last, None before any."""
        return None if self.first_wall is None or self.last_wall is None else self.last_wall - self.first_wall

    def __getitem__(self, name: str):
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name: str, default=None):
        return getattr(self, name, default)
