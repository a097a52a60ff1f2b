"""Run reader: opens every rank's shard (SWMR, so live runs can be followed) and returns numpy arrays."""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import threading
import time

import h5py
import numpy as np

from tview.errors import CorruptShardError, NotARunError, SchemaVersionError, TviewError
from tview.store import schema
from tview.store.manifest import read_manifest

_SHARD_RE = re.compile(r"rank-(\d{5})\.h5$")

# h5py makes each HDF5 call atomic, not a refresh followed by a read: two threads refreshing and
# reading the same SWMR dataset (a web server's callbacks on one open run) got HDF5 errors such as
# "can't insert duplicate key". Every read sequence below holds this lock. HDF5 runs one call at a
# time anyway, so the lock costs no parallelism.
_LOCK = threading.RLock()


def _serialized(method):
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _LOCK:
            return method(*args, **kwargs)
    return locked


def strided(n: int, max_points: int | None) -> slice:
    """Evenly spaced rows keeping at most max_points of n (all of them for None), the first included."""
    if not max_points or n <= max_points:
        return slice(0, n)
    stride = -(-n // max_points)
    return slice(0, n, stride)


def _superblock_eof_address(path: str) -> int | None:
    """The end-of-file address a version 2/3 superblock records (None for other versions)."""
    with open(path, "rb") as f:
        head = f.read(48)
    if head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3):
        return None
    size = head[9]  # size of offsets; base, extension, then end-of-file address
    start = 12 + 2 * size
    return int.from_bytes(head[start:start + size], "little")


def _check_not_truncated(path: str):
    """A file shorter than its superblock's end-of-file address was truncated. A live writer may
    have allocated space it has not written yet, so a short file gets one more look."""
    try:
        for attempt in range(2):
            eoa = _superblock_eof_address(path)
            size = os.path.getsize(path)
            if eoa is None or size >= eoa:
                return
            time.sleep(0.5)
    except OSError as exc:
        raise CorruptShardError(f"{path}: cannot be read: {exc}") from None
    raise CorruptShardError(f"{path}: truncated: {size} bytes on disk, its superblock says {eoa}")


class ShardReader:
    """One rank's shard, opened read-only in SWMR mode."""

    def __init__(self, path: str):
        self.path = path
        _check_not_truncated(path)  # before HDF5 reads: a SWMR reader retries damaged reads for minutes
        try:
            # No chunk cache: a downsampled (strided) read then fetches only the rows it selects, not
            # whole chunks, so reading 2,000 points of a 1e6-step series costs milliseconds.
            self.file = h5py.File(path, "r", swmr=True, libver=schema.LIBVER, rdcc_nbytes=0)
        except OSError as exc:
            raise CorruptShardError(f"{path}: not a readable HDF5 shard (truncated or damaged?): {exc}") from None
        try:
            attrs = self.file.attrs
            if "tview_schema_version" not in attrs:
                raise CorruptShardError(f"{path}: HDF5 file without tview_schema_version; not a tview shard")
            self.version = int(attrs["tview_schema_version"])
            if self.version > schema.SCHEMA_VERSION:
                raise SchemaVersionError(f"{path}: store schema version {self.version} is newer than this "
                                         f"tview reads ({schema.SCHEMA_VERSION}); upgrade tview")
            self.rank = int(attrs["rank"])
            self.layers = [layer["name"] for layer in json.loads(attrs["layers_json"])]
            for table in (schema.TABLE_SCALARS, schema.TABLE_STATS, schema.TABLE_HIST, schema.TABLE_SNAPSHOTS):
                self.file[table]["step"][-1:]  # reads the last chunk: a truncated file fails here
        except TviewError:
            self.file.close()
            raise
        except (KeyError, OSError, ValueError) as exc:
            self.file.close()
            raise CorruptShardError(f"{path}: damaged tview shard: {exc}") from None

    @_serialized
    def dataset(self, table: str, column: str) -> h5py.Dataset:
        try:
            dset = self.file[table][column]
        except KeyError:
            raise KeyError(f"{self.path}: no {table}/{column} in this shard") from None
        dset.refresh()
        return dset

    @_serialized
    def length(self, table: str) -> int:
        return int(self.dataset(table, "step").shape[0])

    @_serialized
    def steps(self, table: str) -> np.ndarray:
        return self.dataset(table, "step")[:]

    @_serialized
    def read(self, table: str, column: str, rows: slice, index=()) -> tuple[np.ndarray, np.ndarray]:
        """Rows of a column with the matching steps; never reads past the step column's length."""
        step = self.dataset(table, "step")
        dset = self.dataset(table, column)
        n = min(step.shape[0], dset.shape[0])
        rows = slice(*rows.indices(n))
        try:
            steps = step[rows]
            values = dset[(rows,) + tuple(index)]
        except OSError as exc:
            raise CorruptShardError(f"{self.path}: {table}/{column} cannot be read (damaged file?): {exc}") from None
        return steps, values

    @_serialized
    def close(self):
        self.file.close()


class Run:
    """A recorded run: manifest plus one shard per rank. Use tview.open_run() to make one."""

    def __init__(self, path: str, skip_bad_shards: bool = False):
        self.path = os.path.dirname(path) if path.endswith(schema.MANIFEST_NAME) else path
        self.manifest = read_manifest(self.path)
        self.world_size = int(self.manifest.get("world_size", 1))
        self.layer_info: list[dict] = list(self.manifest.get("layers", []))
        self.layers: list[str] = [layer["name"] for layer in self.layer_info]
        self.problems: dict[int, str] = {}  # rank -> why its shard is not read
        self._shards: dict[int, ShardReader] = {}
        self.skip_bad_shards = skip_bad_shards
        self._open_shards()
        if self._shards:  # a shard knows what the manifest cannot: channel counts seen in the forward
            first = self._shards[self.ranks[0]]
            self.layer_info = json.loads(first.file.attrs["layers_json"])

    @_serialized
    def _open_shards(self):
        found = {}
        for p in glob.glob(os.path.join(self.path, "rank-*.h5")):
            m = _SHARD_RE.search(p)
            if m:
                found[int(m.group(1))] = p
        for rank, p in sorted(found.items()):
            if rank in self._shards:
                continue
            try:
                self._shards[rank] = ShardReader(p)
                self.problems.pop(rank, None)
            except TviewError as exc:
                if not self.skip_bad_shards:
                    self.close()
                    raise
                self.problems[rank] = str(exc)
        for rank in range(self.world_size):
            if rank not in found:
                self.problems[rank] = f"{os.path.join(self.path, schema.shard_name(rank))}: no shard yet (rank has recorded nothing, or its file is missing)"

    # -- structure ------------------------------------------------------------------------
    @property
    def ranks(self) -> list[int]:
        return sorted(self._shards)

    @property
    def missing_ranks(self) -> list[int]:
        return sorted(r for r in self.problems if r not in self._shards)

    @_serialized
    def refresh(self):
        """Pick up shards that appeared since opening (rows are always read fresh)."""
        self._open_shards()

    def shard(self, rank: int) -> ShardReader:
        try:
            return self._shards[rank]
        except KeyError:
            why = self.problems.get(rank, f"no rank {rank} in this run (ranks: {self.ranks})")
            raise TviewError(f"{self.path}: rank {rank} cannot be read: {why}") from None

    def layer_index(self, layer: str | int) -> int:
        if isinstance(layer, (int, np.integer)):
            if not 0 <= layer < len(self.layers):
                raise KeyError(f"layer index {layer} out of range; {len(self.layers)} layers")
            return int(layer)
        try:
            return self.layers.index(layer)
        except ValueError:
            raise KeyError(f"{self.path}: no layer {layer!r}; layers: {', '.join(self.layers)}") from None

    @_serialized
    def steps(self, rank: int = 0) -> np.ndarray:
        """Recorded steps of a rank (ascending)."""
        return self.shard(rank).steps(schema.TABLE_SCALARS)

    @_serialized
    def scalar_names(self, rank: int = 0) -> list[str]:
        names = self.shard(rank).dataset(schema.TABLE_SCALARS, "names")
        return [bytes(n).decode() for n in names[:]]

    # -- series ---------------------------------------------------------------------------
    @_serialized
    def scalar(self, name: str, rank: int = 0, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a per-step scalar: loss, lr, step_time, examples_per_sec, ..."""
        names = self.scalar_names(rank)
        if name == "wall_time":
            shard = self.shard(rank)
            return shard.read(schema.TABLE_SCALARS, "wall_time", strided(shard.length(schema.TABLE_SCALARS), max_points))
        if name not in names:
            raise KeyError(f"{self.path}: rank {rank} has no scalar {name!r}; scalars: {', '.join(names)}")
        shard = self.shard(rank)
        rows = strided(shard.length(schema.TABLE_SCALARS), max_points)
        return shard.read(schema.TABLE_SCALARS, "values", rows, (names.index(name),))

    @_serialized
    def stat(self, name: str, layer: str | int, rank: int = 0, max_points: int | None = None):
        """(steps, values) of a layer statistic; per-channel statistics give values [steps, C]."""
        shard = self.shard(rank)
        rows = strided(shard.length(schema.TABLE_STATS), max_points)
        i = self.layer_index(layer)
        if name in schema.CHANNEL_STATS:
            key = f"{name}/{self.layers[i]}"
            if self.layers[i] not in shard.file[schema.TABLE_STATS][name]:
                raise KeyError(f"{self.path}: no {name} for layer {self.layers[i]!r} (no channels recorded)")
            steps, values = shard.read(schema.TABLE_STATS, key, rows)
            keep = ~np.isnan(values).all(axis=1) if values.ndim == 2 else np.ones(len(steps), bool)
            return steps[keep], values[keep]
        if name not in schema.LAYER_STATS:
            raise KeyError(f"no statistic {name!r}; statistics: {', '.join(schema.LAYER_STATS + schema.CHANNEL_STATS)}")
        steps, values = shard.read(schema.TABLE_STATS, name, rows, (i,))
        keep = ~np.isnan(values)
        return steps[keep], values[keep]

    @_serialized
    def stat_matrix(self, name: str, rank: int = 0, max_points: int | None = None):
        """(steps, values [steps, layers]) of one statistic for every layer, as a numpy masked array:
        masked where that layer was not measured in that row (fill it with NaN to plot)."""
        if name not in schema.LAYER_STATS:
            raise KeyError(f"no statistic {name!r}; statistics: {', '.join(schema.LAYER_STATS)}")
        shard = self.shard(rank)
        steps, values = shard.read(schema.TABLE_STATS, name, strided(shard.length(schema.TABLE_STATS), max_points))
        return steps, np.ma.masked_invalid(values)

    def stat_names(self) -> list[str]:
        """Per-layer statistics this run holds (for menus and arrays: never a hand-picked list)."""
        return list(schema.LAYER_STATS)

    def channel_stat_names(self) -> list[str]:
        """Per-output-channel statistics this run holds."""
        return list(schema.CHANNEL_STATS)

    def hist_kinds(self) -> list[str]:
        """Histogram kinds this run holds ('grad', 'weight', 'act', ...)."""
        return list(schema.HIST_KINDS)

    def stat_info(self, name: str, layer: str | int | None = None, rank: int = 0) -> dict:
        """How a statistic was measured: {"exact": bool, "sample": N or None, "of": M or None, "note": text}."""
        return {"exact": True, "sample": None, "of": None, "note": "exact"}

    @_serialized
    def layer_values_at(self, name: str, step: int | None, rank: int = 0):
        """(step, masked values [layers]) of a layer statistic at the latest row measured at or
        before `step` (None: the last); (None, all-masked) when there is none."""
        steps, m = self.stat_matrix(name, rank)
        end = len(steps) if step is None else int(np.searchsorted(steps, step, side="right"))
        if end == 0:
            return None, np.ma.masked_all(len(self.layers))
        return int(steps[end - 1]), m[end - 1]

    @_serialized
    def channel_values_at(self, name: str, layer: str | int, step: int | None, rank: int = 0):
        """(step, values [C]) of a per-channel statistic at the latest measured row at or before
        `step` (None: the last); None when the layer has none there."""
        try:
            steps, values = self.stat(name, layer, rank)
        except KeyError:
            return None
        end = len(steps) if step is None else int(np.searchsorted(steps, step, side="right"))
        return (int(steps[end - 1]), values[end - 1]) if end else None

    @_serialized
    def trajectory(self, layer: str | int, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(steps, [steps, dims]): the layer's parameters projected on fixed random unit directions,
        at the steps that recorded it (presets record it on detail steps: other rows hold NaN)."""
        steps, coords = self.shard(rank).read(schema.TABLE_STATS, "trajectory", slice(None), (self.layer_index(layer),))
        keep = ~np.isnan(coords).all(axis=1)
        return steps[keep], coords[keep]

    @_serialized
    def trajectories(self, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(steps, [steps, layers, dims]) of every layer's projected parameters, at the steps that
        recorded the trajectory (layers without parameters hold NaN)."""
        shard = self.shard(rank)
        steps, t = shard.read(schema.TABLE_STATS, "trajectory", slice(None))
        keep = ~np.isnan(t).all(axis=(1, 2)) if t.size else np.zeros(len(steps), bool)
        return steps[keep], t[keep]

    @_serialized
    def histogram(self, kind: str, layer: str | int, rank: int = 0, max_points: int | None = None):
        """(steps, bin_edges, counts [steps, bins]) of 'grad', 'weight' or 'act' values."""
        if kind not in schema.HIST_KINDS:
            raise KeyError(f"no histogram kind {kind!r}; kinds: {', '.join(schema.HIST_KINDS)}")
        shard = self.shard(rank)
        rows = strided(shard.length(schema.TABLE_HIST), max_points)
        steps, counts = shard.read(schema.TABLE_HIST, kind, rows, (self.layer_index(layer),))
        return steps, shard.file["hist_edges"][:], counts

    @_serialized
    def _snapshot(self, group: str, layer: str, step: int | None, rank: int):
        shard = self.shard(rank)
        name = self.layers[self.layer_index(layer)]
        key = f"{group}/{name}"
        if key.split("/")[1] not in shard.file[schema.TABLE_SNAPSHOTS][group]:
            have = list(shard.file[schema.TABLE_SNAPSHOTS][group])
            raise KeyError(f"{self.path}: no {group} recorded for layer {name!r}; layers with {group}: {have}")
        steps = shard.steps(schema.TABLE_SNAPSHOTS)
        if len(steps) == 0:
            raise KeyError(f"{shard.path}: no snapshot recorded yet")
        if step is None:
            i = len(steps) - 1
        else:
            i = int(np.searchsorted(steps, step, side="right")) - 1
            if i < 0:
                raise KeyError(f"{shard.path}: no snapshot at or before step {step}; first is {steps[0]}")
        _, value = shard.read(schema.TABLE_SNAPSHOTS, key, slice(i, i + 1))
        return int(steps[i]), value[0]

    @_serialized
    def snapshot_steps(self, rank: int = 0) -> np.ndarray:
        return self.shard(rank).steps(schema.TABLE_SNAPSHOTS)

    def filters(self, layer: str, step: int | None = None, rank: int = 0) -> tuple[int, np.ndarray]:
        """(step, [Cout, Cin, kH, kW]) conv filters at the latest snapshot at or before step (None: last)."""
        return self._snapshot("filters", layer, step, rank)

    def feature_maps(self, layer: str, step: int | None = None, rank: int = 0) -> tuple[int, np.ndarray]:
        """(step, [N, C, H, W]) the probe batch's feature maps at the latest snapshot at or before step."""
        return self._snapshot("feature_maps", layer, step, rank)

    @_serialized
    def probe_inputs(self, rank: int = 0) -> np.ndarray | None:
        probe = self.shard(rank).file["probe"]
        return probe["inputs"][:] if "inputs" in probe else None

    # -- health of the ranks --------------------------------------------------------------
    @_serialized
    def rank_status(self) -> dict[int, dict]:
        """Per rank: recorded steps, last step, whether it closed cleanly, records dropped, problem."""
        status = {}
        for rank in range(max([self.world_size] + [r + 1 for r in self.ranks])):
            if rank not in self._shards:
                status[rank] = {"steps": 0, "last_step": None, "closed": False, "dropped": 0,
                                "problem": self.problems.get(rank, "missing"), "first_wall": None, "last_wall": None}
                continue
            shard = self._shards[rank]
            step = shard.dataset(schema.TABLE_SCALARS, "step")
            n = int(step.shape[0])  # the length and the last row only: cheap however long the run
            closed = shard.dataset("status", "closed")[0] == 1
            dropped = int(shard.dataset("status", "dropped")[0])
            wall = shard.dataset(schema.TABLE_SCALARS, "wall_time")
            status[rank] = {"steps": n, "last_step": int(step[n - 1]) if n else None,
                            "closed": bool(closed), "dropped": dropped, "problem": None,
                            "first_wall": float(wall[0]) if n else None,
                            "last_wall": float(wall[n - 1]) if n else None}
        return status

    @_serialized
    def first_nonfinite(self, rank: int = 0) -> dict[str, dict[str, int]]:
        """Where NaN/Inf first appeared on a rank: {"layers": {layer: step}, "scalars": {name: step}}
        (gradients or activations of a layer; a scalar such as the loss). Absent names: never."""
        shard = self.shard(rank)
        names = self.scalar_names(rank)
        if "first_nonfinite_layer" in shard.file["status"]:
            layer_first = shard.dataset("status", "first_nonfinite_layer")[:]
            scalar_first = shard.dataset("status", "first_nonfinite_scalar")[:len(names)]
        else:  # a shard written before these were kept: scan the layer tables (scalars: unknown)
            steps = shard.steps(schema.TABLE_STATS)
            bad = np.zeros((len(steps), len(self.layers)), dtype=bool)
            for stat in schema.NONFINITE_STATS:
                bad |= np.nan_to_num(shard.read(schema.TABLE_STATS, stat, slice(None))[1]) > 0
            layer_first = np.where(bad.any(axis=0), steps[bad.argmax(axis=0)], -1) if len(steps) else []
            scalar_first = []
        return {"layers": {self.layers[i]: int(s) for i, s in enumerate(layer_first) if s >= 0},
                "scalars": {names[i]: int(s) for i, s in enumerate(scalar_first) if s >= 0}}

    def stopped_ranks(self) -> dict[int, int | None]:
        """Ranks that stopped early: not closed cleanly and behind the furthest rank. rank -> last step."""
        status = self.rank_status()
        furthest = max((s["last_step"] for s in status.values() if s["last_step"] is not None), default=None)
        return {r: s["last_step"] for r, s in status.items()
                if not s["closed"] and (s["last_step"] is None or s["last_step"] < (furthest or 0))}

    @_serialized
    def close(self):
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Run({self.path!r}, ranks={self.ranks}, layers={len(self.layers)})"


def open_run(path: str, skip_bad_shards: bool = False) -> Run:
    """Open a run folder (or its run.tview). A bad shard raises, unless skip_bad_shards is set:
    then it is left out and described in run.problems."""
    return Run(os.fspath(path), skip_bad_shards=skip_bad_shards)


def find_runs(folder: str) -> list[str]:
    """Run folders at or below `folder` (a run itself, or a folder of runs), sorted."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotARunError(f"{folder}: no such folder")
    found = []
    for root, dirs, files in os.walk(folder):
        if schema.MANIFEST_NAME in files:
            found.append(root)
            dirs[:] = []
        dirs.sort()
    return sorted(found)
