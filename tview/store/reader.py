"""Run reader: a run's manifest and one SWMR shard per rank, read back as numpy arrays.

Every value returned was measured: a statistic is read on the steps (and layers) its probe measured
and nowhere else, so NaN in what comes back means the model produced NaN. What a shard holds is
discovered from the shard itself (each probe table carries its declaration), never from a list here.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import json
import os
import re
import threading
import time
import traceback
from collections import OrderedDict

import h5py
import numpy as np

from tview.errors import CorruptShardError, NotARunError, SchemaVersionError, TviewError
from tview.store import parallel, rank_summary, schema
from tview.store.h5open import check_shard_file, open_shard_id
from tview.store.manifest import read_manifest

_SHARD_RE = re.compile(r"^rank-(\d{5})\.h5$")
EAGER_SHARDS = 64  # runs with more ranks open each shard on first use (opening costs ~1 ms a shard)
OPEN_SHARDS = 64  # shards kept open at most, least recently used closed first: HDF5 holds ~0.5 MiB per open file
NEW_FILE_SECONDS = 2.0  # a shard of a few hundred bytes written this recently is being created

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


_H5_FAILURES = (KeyError, OSError, RuntimeError, IndexError, ValueError, AttributeError, TypeError)


def _from_h5py(exc: BaseException) -> bool:
    """Whether an exception was raised inside h5py (a damaged file), not by tview's own checks."""
    return any("h5py" in frame.filename for frame in traceback.extract_tb(exc.__traceback__))


def _guarded(method):
    """A Run method under the reader lock whose h5py failures (a damaged object the checks at opening
    did not reach) come out as CorruptShardError naming the shard, never as a foreign exception."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with _LOCK:
            try:
                return method(self, *args, **kwargs)
            except _H5_FAILURES as exc:
                if isinstance(exc, TviewError) or not _from_h5py(exc):
                    raise
                rank = signature.bind_partial(self, *args, **kwargs).arguments.get("rank", 0)
                where = self._files.get(rank, self.path) if isinstance(rank, int) else self.path
                raise CorruptShardError(f"{where}: cannot be read (damaged?): {type(exc).__name__}: "
                                        f"{str(exc)[:300]}") from None
    return call


def strided(n: int, max_points: int | None) -> slice:
    """Evenly spaced rows keeping at most max_points of n (all of them for None), the first included."""
    if not max_points or n <= max_points:
        return slice(0, n)
    stride = -(-n // max_points)
    return slice(0, n, stride)


def _v1_message(path: str) -> str:
    return (f"{path}: written with store schema 1; this tview reads schema {schema.SCHEMA_VERSION}. "
            f"Convert the run with `tview upgrade RUN` (it keeps a copy of each old shard)")


@functools.lru_cache(maxsize=64)
def _parsed(text: str):
    """JSON parsed once for every shard that holds the same text (all ranks of a run do)."""
    return json.loads(text)


def _layers_of(path: str, text) -> list[dict]:
    layers = _parsed(text if isinstance(text, str) else bytes(text).decode())
    if not isinstance(layers, list) or not all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in layers):
        raise CorruptShardError(f"{path}: layers_json is not a list of layers with names")
    return layers


def _tables_of(shard: ShardReader, text) -> dict[str, schema.TableSpec]:
    """The probe tables' declarations: from the root attribute tables_json (one read), else each table's spec."""
    if text is None:
        return {name: schema.TableSpec.from_json(g.attrs["spec"]) for name, g in shard.file[schema.PROBES].items()}
    specs = _table_specs(text if isinstance(text, str) else bytes(text).decode())
    held = h5py.h5g.open(shard.fid, schema.PROBES.encode()).get_num_objs()  # a missing one fails when read
    if held != len(specs):
        raise CorruptShardError(f"{shard.path}: tables_json declares {sorted(specs)}, the file holds "
                                f"{sorted(shard.file[schema.PROBES])}")
    return specs


@functools.lru_cache(maxsize=64)
def _table_specs(text: str) -> dict[str, schema.TableSpec]:
    return {d["name"]: schema.TableSpec.from_json(json.dumps(d)) for d in json.loads(text)}


def _expected_shapes(shard: ShardReader) -> dict[str, tuple]:
    """Row shape of each dataset whose shape the declarations fix, by path in the file."""
    L = len(shard.layers)
    need = {f"{schema.TABLE_SCALARS}/values": (schema.MAX_SCALARS,),
            f"{schema.TABLE_SCALARS}/measured": (schema.MAX_SCALARS,)}
    for name, spec in shard.tables.items():
        base = f"{schema.PROBES}/{name}"
        need.update({f"{base}/step": (), f"{base}/measured": (L,)})
        if spec.sampled:
            need.update({f"{base}/sample_n": (L,), f"{base}/total_n": (L,)})
        shapes = {schema.LAYER: (L,), schema.HIST: (L, schema.HIST_BINS)}
        need.update({f"{base}/{c.name}": shapes.get(c.kind, (L, c.width)) for c in spec.columns
                     if c.kind != schema.CHANNEL})
    return need


class _Attributes:
    """A file's root attributes read with HDF5's low-level calls (a third of h5py's cost per attribute);
    strings come back as bytes."""

    def __init__(self, fid: h5py.h5f.FileID):
        self.fid = fid

    def __contains__(self, name: str) -> bool:
        return h5py.h5a.exists(self.fid, name.encode())

    def __getitem__(self, name: str):
        try:
            attr = h5py.h5a.open(self.fid, name.encode())
        except KeyError:
            raise KeyError(f"no attribute {name!r}") from None
        out = np.empty(attr.shape, attr.dtype)
        attr.read(out)
        return out[()]

    def get(self, name: str, default=None):
        return self[name] if name in self else default


class ShardReader:
    """One rank's shard, opened read-only in SWMR mode; `rank`: the rank its file name says."""

    def __init__(self, path: str, rank: int | None = None):
        self.path = path
        self.fid = open_shard_id(path)
        self._file: h5py.File | None = None
        try:
            self._read_header(rank)
        except TviewError:
            self.close()
            raise
        except (KeyError, OSError, ValueError, TypeError, RuntimeError, AttributeError, RecursionError) as exc:
            self.close()
            raise CorruptShardError(f"{path}: damaged tview shard: {type(exc).__name__}: {exc}") from None

    @property
    def file(self) -> h5py.File:
        """The shard as an h5py File (made on first use: most reads need only the file id)."""
        if self._file is None:
            self._file = h5py.File(self.fid)
        return self._file

    def _read_header(self, rank: int | None):
        attrs = _Attributes(self.fid)
        if "tview_schema_version" not in attrs:
            raise CorruptShardError(f"{self.path}: HDF5 file without tview_schema_version; not a tview shard")
        self.version = int(attrs["tview_schema_version"])
        if self.version > schema.SCHEMA_VERSION:
            raise SchemaVersionError(f"{self.path}: store schema version {self.version} is newer than this "
                                     f"tview reads ({schema.SCHEMA_VERSION}); upgrade tview")
        if self.version < schema.SCHEMA_VERSION:
            raise SchemaVersionError(_v1_message(self.path))
        self.rank = int(attrs["rank"])
        if rank is not None and self.rank != rank:
            raise CorruptShardError(f"{self.path}: holds rank {self.rank}'s data under rank {rank}'s name "
                                    f"(a copied or renamed shard?)")
        self.layer_info = _layers_of(self.path, attrs["layers_json"])
        self.layers = [layer["name"] for layer in self.layer_info]
        self.tables = _tables_of(self, attrs.get("tables_json"))
        self.columns = {c.name: (t, c) for t, spec in self.tables.items() for c in spec.columns}
        self.world_size = int(attrs["world_size"])
        self._shapes, self._checked = _expected_shapes(self), set()

    @staticmethod
    def table_path(table: str) -> str:
        return schema.table_path(table)

    @_serialized
    def dataset(self, table: str, column: str) -> h5py.Dataset:
        return h5py.Dataset(self._dataset_id(table, column))

    def _dataset_id(self, table: str, column: str) -> h5py.h5d.DatasetID:
        group = self.table_path(table) if table != "status" else "status"
        path = f"{group}/{column}"
        try:
            # one low-level open by full path (a third of two high-level lookups), not kept: two readers of
            # one file in a process (an open run and `tview info`) holding the same dataset open made
            # HDF5's shared metadata cache fail on refresh ("can't insert duplicate key")
            did = h5py.h5d.open(self.fid, path.encode())
            did.refresh()
        except (KeyError, FileNotFoundError):
            raise CorruptShardError(f"{self.path}: no {group}/{column} in this shard (damaged or edited?)") from None
        except (OSError, RuntimeError, ValueError, AttributeError, TypeError) as exc:
            raise CorruptShardError(f"{self.path}: {group}/{column} cannot be opened (damaged?): {exc}") from None
        if path not in self._checked:  # the shape its declaration fixes, checked once
            want = self._shapes.get(path)
            if want is not None and tuple(did.shape[1:]) != want:
                raise CorruptShardError(f"{self.path}: {path} has shape {did.shape}, expected "
                                        f"rows of {want} (damaged or edited shard)")
            self._checked.add(path)
        return did

    def _rows(self, did: h5py.h5d.DatasetID, table: str, column: str, rows: range, layer: int | None = None):
        """Rows (a stepped range) of a dataset, all of each row or its entry `layer` along axis 1, read with
        HDF5's low-level calls."""
        shape = did.shape
        count = (len(rows),) + shape[1:]
        start = (rows.start,) + (0,) * (len(shape) - 1)
        if layer is not None:
            count, start = count[:1] + (1,) + count[2:], start[:1] + (layer,) + start[2:]
        out = np.empty(count, did.dtype)
        try:
            if len(rows):
                space = did.get_space()
                space.select_hyperslab(start, count, (rows.step,) + (1,) * (len(shape) - 1))
                did.read(h5py.h5s.create_simple(count), space, out)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CorruptShardError(f"{self.path}: {table}/{column} cannot be read (damaged file?): {exc}") from None
        return out if layer is None else out.reshape(count[:1] + count[2:])

    @_serialized
    def length(self, table: str) -> int:
        return int(self.dataset(table, "step").shape[0])

    @_serialized
    def steps(self, table: str, rows: slice = slice(None)) -> np.ndarray:
        dset = self.dataset(table, "step")
        return self._checked_steps(table, self._get(dset, table, "step", (rows,)))

    def _checked_steps(self, table: str, steps: np.ndarray) -> np.ndarray:
        if len(steps) and (steps[0] < 0 or (np.diff(steps) <= 0).any()):
            raise CorruptShardError(f"{self.path}: {table}/step holds negative or out-of-order steps "
                                    f"(damaged or edited shard)")
        return steps

    def _get(self, dset: h5py.Dataset, table: str, column: str, selection: tuple) -> np.ndarray:
        try:
            return dset[selection]
        except (OSError, ValueError, RuntimeError) as exc:
            raise CorruptShardError(f"{self.path}: {table}/{column} cannot be read (damaged file?): {exc}") from None

    @_serialized
    def read(self, table: str, column: str, rows: slice, index=()) -> tuple[np.ndarray, np.ndarray]:
        """Rows of a column with the matching steps; never reads past the step column's length."""
        step = self.dataset(table, "step")
        dset = self.dataset(table, column)
        n = min(step.shape[0], dset.shape[0])
        rows = slice(*rows.indices(n))
        steps = self._checked_steps(table, self._get(step, table, "step", (rows,)))
        return steps, self._get(dset, table, column, (rows,) + tuple(index))

    @_serialized
    def measured(self, table: str, column: str, layer: int, max_points: int | None = None, index=()):
        """(steps, values) of one layer's column (`index`: () or (layer,) into its row) at the rows where the
        table measured that layer (each dataset opened and read once, low-level: this runs once per rank when
        a statistic is read across ranks)."""
        step, mask, dset = (self._dataset_id(table, c) for c in ("step", "measured", column))
        n = min(step.shape[0], mask.shape[0], dset.shape[0])
        rows = range(*strided(n, max_points).indices(n))
        steps = self._checked_steps(table, self._rows(step, table, "step", rows))
        keep = self._rows(mask, table, "measured", rows, layer).astype(bool)
        values = self._rows(dset, table, column, rows, index[0] if index else None)
        return steps[keep], values[keep]

    @_serialized
    def masked(self, table: str, column: str, max_points: int | None = None):
        """(steps, values, measured [rows, layers]) of a whole column: every layer, every row the table has."""
        rows = strided(self.length(table), max_points)
        steps, mask = self.read(table, "measured", rows)
        _, values = self.read(table, column, rows)
        return steps, values, mask.astype(bool)

    @_serialized
    def close(self):
        if self._file is not None:
            self._file.close()  # h5py closes what it opened in the file too
            self._file = None
        elif self.fid.valid:
            self.fid.close()  # every dataset read through the id is closed already


def being_created(path: str) -> bool:
    """True when a writer holds `path` locked (HDF5 locks a file it creates until it switches to SWMR
    mode), or when it is a few hundred bytes written in the last two seconds: not ready, not damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            return True
        except OSError:
            pass
        st = os.fstat(fd)
        return st.st_size < 512 and time.time() - st.st_mtime < NEW_FILE_SECONDS
    finally:
        os.close(fd)


def _shard_files(folder: str) -> dict[int, str]:
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            m = _SHARD_RE.match(entry.name)
            if m:
                found[int(m.group(1))] = entry.path
    return found


class Run:
    """A recorded run: manifest plus one shard per rank. Use tview.open_run() to make one."""

    def __init__(self, path: str, skip_bad_shards: bool = False):
        self.path = os.path.dirname(path) if path.endswith(schema.MANIFEST_NAME) else path
        self.manifest = read_manifest(self.path)
        self.world_size = int(self.manifest["world_size"])
        self.layer_info: list[dict] = list(self.manifest["layers"])
        self.layers: list[str] = [layer["name"] for layer in self.layer_info]
        self.problems: dict[int, str] = {}  # rank -> why its shard is not read
        self._shards: OrderedDict[int, ShardReader] = OrderedDict()  # open ones, least recently used first
        self._files: dict[int, str] = {}  # ranks whose shard looks sound, opened or not
        self._summaries: dict[int, tuple] = {}  # rank -> (stamps of its summary file and shard, parsed summary)
        self.skip_bad_shards = skip_bad_shards
        self._first: ShardReader | None = None
        self._open_shards()

    # -- opening --------------------------------------------------------------------------
    def _leave_out(self, rank: int, why: str):
        """A rank whose shard is not read: why in run.problems, its file forgotten, closed if it was open."""
        self.problems[rank] = why
        self._files.pop(rank, None)
        shard = self._shards.pop(rank, None)
        if shard is not None:
            if shard is self._first:
                self._first = None
            shard.close()

    def _bad(self, rank: int, exc: TviewError):
        path = os.path.join(self.path, schema.shard_name(rank))
        young = being_created(path)
        self._leave_out(rank, f"{path}: not ready yet (its writer is creating it)" if young else str(exc))
        if not self.skip_bad_shards and not young:
            self.close()
            raise exc

    @_guarded
    def _open_shards(self):
        found = _shard_files(self.path)
        for rank, p in sorted(found.items()):
            if rank in self._files:
                continue
            try:
                check_shard_file(p)
                self._files[rank] = p
                self.problems.pop(rank, None)
            except TviewError as exc:
                self._bad(rank, exc)
        # every shard of a small run; of a larger one only the first (what the run holds), the rest on use
        for rank in sorted(self._files)[: None if len(self._files) <= EAGER_SHARDS else 1]:
            self._open(rank)
        for rank in range(self.world_size):
            if rank not in found:
                self.problems[rank] = (f"{os.path.join(self.path, schema.shard_name(rank))}: no shard yet (rank has "
                                       f"recorded nothing, or its file is missing)")

    def _open(self, rank: int) -> ShardReader | None:
        if rank in self._shards:
            self._shards.move_to_end(rank)
            return self._shards[rank]
        try:
            shard = ShardReader(self._files[rank], rank)
            self._check_layers(shard)
        except TviewError as exc:
            self._bad(rank, exc)
            return None
        self._shards[rank] = shard
        self._close_least_used()
        if self._first is None:
            self._first = shard
            self.layer_info = shard.layer_info  # a shard knows what the manifest cannot: channel counts
        return shard

    def _close_least_used(self):
        """Keep at most OPEN_SHARDS shards open (the reference shard stays): memory bounded whatever the ranks."""
        for rank in list(self._shards):
            if len(self._shards) <= OPEN_SHARDS:
                return
            if self._shards[rank] is not self._first:
                self._shards.pop(rank).close()

    def _check_layers(self, shard: ShardReader):
        if shard.world_size != self.world_size:
            shard.close()
            raise CorruptShardError(f"{shard.path}: written by a job of {shard.world_size} ranks, while "
                                    f"{os.path.join(self.path, schema.MANIFEST_NAME)} says world_size "
                                    f"{self.world_size}; the manifest was edited or belongs to another run")
        if shard.layers != self.layers:
            shard.close()
            raise CorruptShardError(f"{shard.path}: its layers {shard.layers} differ from those of "
                                    f"{os.path.join(self.path, schema.MANIFEST_NAME)} {self.layers}; the manifest "
                                    f"was edited or belongs to another run")

    # -- structure ------------------------------------------------------------------------
    @property
    def ranks(self) -> list[int]:
        """Ranks with a shard that looks sound (shards of large runs are opened on first use)."""
        return sorted(self._files)

    @property
    def missing_ranks(self) -> list[int]:
        return sorted(r for r in self.problems if r not in self._files)

    @_guarded
    def refresh(self):
        """Pick up shards that appeared since opening (rows are always read fresh)."""
        self._open_shards()

    @_guarded
    def shard(self, rank: int) -> ShardReader:
        if rank in self._files:
            shard = self._open(rank)
            if shard is not None:
                return shard
        why = self.problems.get(rank, f"no rank {rank} in this run (ranks: {self.ranks})")
        raise TviewError(f"{self.path}: rank {rank} cannot be read: {why}")

    def _reference(self) -> ShardReader | None:
        """The first readable shard: what statistics the run holds."""
        if self._first is None:
            for rank in self.ranks:
                if self._open(rank) is not None:
                    break
        return self._first

    def layer_index(self, layer: str | int) -> int:
        if isinstance(layer, (int, np.integer)):
            if not 0 <= layer < len(self.layers):
                raise KeyError(f"layer index {layer} out of range; {len(self.layers)} layers")
            return int(layer)
        try:
            return self.layers.index(layer)
        except ValueError:
            raise KeyError(f"{self.path}: no layer {layer!r}; layers: {', '.join(self.layers)}") from None

    def tables(self) -> dict[str, schema.TableSpec]:
        """The probe tables this run holds (their declarations: columns, cadence, what they read)."""
        ref = self._reference()
        return dict(ref.tables) if ref else {}

    @_guarded
    def table_length(self, table: str, rank: int = 0) -> int:
        """Rows a probe table (or 'scalars', 'snapshots') holds on a rank: the steps it ran on."""
        return self.shard(rank).length(table)

    def _names(self, *kinds: str) -> list[str]:
        return [c.name for spec in self.tables().values() for c in spec.columns if c.kind in kinds]

    def stat_names(self) -> list[str]:
        """Per-layer statistics this run holds (for menus and arrays: never a hand-picked list)."""
        return self._names(schema.LAYER)

    def channel_stat_names(self) -> list[str]:
        """Per-output-channel statistics this run holds."""
        return self._names(schema.CHANNEL)

    def hist_kinds(self) -> list[str]:
        """Histogram kinds this run holds ('grad', 'weight', 'act', ...)."""
        return self._names(schema.HIST)

    def _column(self, name: str, rank: int, kinds: tuple[str, ...]) -> tuple[ShardReader, str, schema.Column]:
        shard = self.shard(rank)
        found = shard.columns.get(name)
        if found is None or found[1].kind not in kinds:
            have = [c for c, (_, col) in shard.columns.items() if col.kind in kinds]
            raise KeyError(f"{self.path}: rank {rank} records no {name!r}; it has: {', '.join(have)}")
        return shard, found[0], found[1]

    # -- series ---------------------------------------------------------------------------
    @_guarded
    def steps(self, rank: int = 0) -> np.ndarray:
        """Recorded steps of a rank (ascending)."""
        return self.shard(rank).steps(schema.TABLE_SCALARS)

    @_guarded
    def scalar_names(self, rank: int = 0) -> list[str]:
        shard = self.shard(rank)
        names = shard._get(shard.dataset(schema.TABLE_SCALARS, "names"), schema.TABLE_SCALARS, "names", (slice(None),))
        try:
            return [bytes(n).decode("utf-8") for n in names]
        except UnicodeDecodeError:
            raise CorruptShardError(f"{shard.path}: scalars/names holds a name that is not UTF-8 (damaged?)") from None

    @_guarded
    def scalar(self, name: str, rank: int = 0, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a per-step scalar: loss, lr, step_time, examples_per_sec, ..."""
        shard = self.shard(rank)
        rows = strided(shard.length(schema.TABLE_SCALARS), max_points)
        if name == "wall_time":
            return shard.read(schema.TABLE_SCALARS, "wall_time", rows)
        names = self.scalar_names(rank)
        if name not in names:
            raise KeyError(f"{self.path}: rank {rank} has no scalar {name!r}; scalars: {', '.join(names)}")
        steps, values = shard.read(schema.TABLE_SCALARS, "values", rows, (names.index(name),))
        _, measured = shard.read(schema.TABLE_SCALARS, "measured", rows, (names.index(name),))
        keep = measured.astype(bool)  # a step where this scalar was not passed: absent, not NaN
        return steps[keep], values[keep]

    @_guarded
    def stat(self, name: str, layer: str | int, rank: int = 0, max_points: int | None = None):
        """(steps, values) of a statistic of one layer at the steps where it was measured; per-channel
        statistics give values [steps, C]."""
        shard, table, col = self._column(name, rank, (schema.LAYER, schema.CHANNEL))
        i = self.layer_index(layer)
        if col.kind == schema.LAYER:
            return shard.measured(table, name, i, max_points, (i,))
        key = f"{name}/{self.layers[i]}"
        if self.layers[i] not in shard.file[shard.table_path(table)][name]:
            if shard.read(table, "measured", slice(None), (i,))[1].any():  # measured, yet its dataset is gone
                raise CorruptShardError(f"{shard.path}: {table}/{key} is missing though the table measured layer "
                                        f"{self.layers[i]!r} (damaged or edited shard)")
            raise KeyError(f"{self.path}: no {name} for layer {self.layers[i]!r} (it has no channels recorded)")
        return shard.measured(table, key, i, max_points)

    @_guarded
    def stat_matrix(self, name: str, rank: int = 0, max_points: int | None = None):
        """(steps, values [steps, layers]) of one statistic for every layer, at the steps its probe ran,
        as a numpy masked array: masked where that layer was not measured in that row."""
        shard, table, _ = self._column(name, rank, (schema.LAYER,))
        steps, values, mask = shard.masked(table, name, max_points)
        return steps, np.ma.MaskedArray(values, mask=~mask)

    @_guarded
    def stat_info(self, name: str, layer: str | int | None = None, rank: int = 0) -> dict:
        """How a statistic (or histogram kind) was measured: {"exact": bool, "sample": N, "of": M, "note"}
        (N and M: medians over the measured rows, None when exact)."""
        shard, table, _ = self._column(name, rank, schema.KINDS)
        if not shard.tables[table].sampled:
            return {"exact": True, "sample": None, "of": None, "note": "exact: over the whole tensor"}
        if layer is None:  # over every measured layer
            _, n, mask = shard.masked(table, "sample_n", 2000)
            n, m = n[mask], shard.masked(table, "total_n", 2000)[1][mask]
        else:
            i = self.layer_index(layer)
            n = shard.measured(table, "sample_n", i, 2000, (i,))[1]
            m = shard.measured(table, "total_n", i, 2000, (i,))[1]
        if not len(n) or np.isnan(n).all():
            why = "none measured yet" if not len(n) else "its size was not recorded: converted from store schema 1"
            return {"exact": False, "sample": None, "of": None, "note": f"estimated from a sample ({why})"}
        n, m = int(np.median(n)), int(np.median(m))
        if n >= m:
            return {"exact": True, "sample": n, "of": m, "note": f"exact: all {m} values"}
        return {"exact": False, "sample": n, "of": m, "note": f"estimated from {n} of {m} values"}

    @_guarded
    def layer_values_at(self, name: str, step: int | None, rank: int = 0):
        """(step, masked values [layers]) of a layer statistic at the latest row at or before `step`
        (None: the last); (None, all masked) when there is none."""
        shard, table, _ = self._column(name, rank, (schema.LAYER,))
        steps = shard.steps(table)
        end = len(steps) if step is None else int(np.searchsorted(steps, step, side="right"))
        if end == 0:
            return None, np.ma.masked_all(len(self.layers))
        _, values = shard.read(table, name, slice(end - 1, end))
        _, mask = shard.read(table, "measured", slice(end - 1, end))
        return int(steps[end - 1]), np.ma.MaskedArray(values[0], mask=~mask[0].astype(bool))

    @_guarded
    def channel_values_at(self, name: str, layer: str | int, step: int | None, rank: int = 0):
        """(step, values [C]) of a per-channel statistic at the latest measured row at or before
        `step` (None: the last); None when the layer has none there."""
        try:
            steps, values = self.stat(name, layer, rank)
        except KeyError:
            return None
        end = len(steps) if step is None else int(np.searchsorted(steps, step, side="right"))
        return (int(steps[end - 1]), values[end - 1]) if end else None

    @_guarded
    def trajectory(self, layer: str | int, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(steps, [steps, dims]): the layer's parameters projected on fixed random unit directions,
        at the steps that recorded it."""
        shard, table, _ = self._column("trajectory", rank, (schema.VECTOR,))
        i = self.layer_index(layer)
        return shard.measured(table, "trajectory", i, None, (i,))

    @_guarded
    def trajectories(self, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(steps, [steps, layers, dims]) of every layer's projected parameters at the steps that
        recorded the trajectory (layers without parameters hold NaN)."""
        shard, table, _ = self._column("trajectory", rank, (schema.VECTOR,))
        steps, values, mask = shard.masked(table, "trajectory")
        return steps, np.where(mask[:, :, None], values, np.nan)

    @_guarded
    def histogram(self, kind: str, layer: str | int, rank: int = 0, max_points: int | None = None):
        """(steps, bin_edges, counts [steps, bins]) of 'grad', 'weight' or 'act' values."""
        shard, table, _ = self._column(kind, rank, (schema.HIST,))
        i = self.layer_index(layer)
        steps, counts = shard.measured(table, kind, i, max_points, (i,))
        return steps, schema.hist_edges(), counts

    @_guarded
    def _snapshot(self, group: str, layer: str, step: int | None, rank: int):
        shard = self.shard(rank)
        name = self.layers[self.layer_index(layer)]
        have = list(shard.file[schema.TABLE_SNAPSHOTS][group])
        if name not in have:
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
        _, value = shard.read(schema.TABLE_SNAPSHOTS, f"{group}/{name}", slice(i, i + 1))
        return int(steps[i]), value[0]

    @_guarded
    def snapshot_steps(self, rank: int = 0) -> np.ndarray:
        return self.shard(rank).steps(schema.TABLE_SNAPSHOTS)

    def filters(self, layer: str, step: int | None = None, rank: int = 0) -> tuple[int, np.ndarray]:
        """(step, [Cout, Cin, kH, kW]) conv filters at the latest snapshot at or before step (None: last)."""
        return self._snapshot("filters", layer, step, rank)

    def feature_maps(self, layer: str, step: int | None = None, rank: int = 0) -> tuple[int, np.ndarray]:
        """(step, [N, C, H, W]) the probe batch's feature maps at the latest snapshot at or before step."""
        return self._snapshot("feature_maps", layer, step, rank)

    @_guarded
    def probe_inputs(self, rank: int = 0) -> np.ndarray | None:
        shard = self.shard(rank)
        probe = shard.file["probe"]
        maps = shard.file[f"{schema.TABLE_SNAPSHOTS}/feature_maps"]
        if "inputs" in probe:
            inputs = probe["inputs"][:]
            examples = {int(maps[k].shape[1]) for k in maps}
            if examples and examples != {len(inputs)}:
                raise CorruptShardError(f"{shard.path}: probe/inputs holds {len(inputs)} examples, its feature maps "
                                        f"{sorted(examples)} (damaged or edited shard)")
            return inputs
        if len(maps):
            raise CorruptShardError(f"{shard.path}: feature maps without the probe batch they came from "
                                    f"(probe/inputs missing: damaged or edited shard)")
        return None

    # -- health of the ranks --------------------------------------------------------------
    @_guarded
    def rank_summaries(self) -> dict[int, dict]:
        """Per rank (0 to world_size - 1, and any beyond with a shard): its summary (tview.store.rank_summary:
        steps, first/last step and wall time, closed, dropped, first_nonfinite, trend), from the small file its
        writer keeps beside the shard (no HDF5 opened), or computed from the shard when that file is missing or
        stale. A rank that cannot be read has {"problem": why} and no trend; readable ones have problem None."""
        out = {}
        for rank in range(max([self.world_size] + [r + 1 for r in self.ranks])):
            summary = None
            if rank in self._files and rank not in self.problems:
                summary = self._written_summary(rank) or self._summary_from_shard(rank)
            if summary is None:
                summary = {"rank": rank, "steps": 0, "last_step": None, "closed": False, "dropped": 0,
                           "first_wall": None, "last_wall": None, "first_nonfinite": None, "trend": None,
                           "problem": self.problems.get(rank, "missing")}
            else:
                summary = {**summary, "problem": None}
            out[rank] = summary
        return out

    def _written_summary(self, rank: int) -> dict | None:
        """The rank's summary file, parsed again only when it or its shard changed (a poll of 1024 unchanged
        ranks: 2048 stat calls, no JSON)."""
        shard = self._files[rank]
        try:
            key = (*rank_summary.shard_stamp(rank_summary.summary_path(shard)), *rank_summary.shard_stamp(shard))
        except OSError:
            return None
        cached = self._summaries.get(rank)
        if cached is not None and cached[0] == key:
            return cached[1]
        summary = rank_summary.read_summary(shard, rank)
        if summary is not None:
            self._summaries[rank] = (key, summary)
        return summary

    def _summary_from_shard(self, rank: int) -> dict | None:
        try:
            shard = self.shard(rank)
            return _shard_summary(shard, self.scalar_names(rank), self.first_nonfinite(rank))
        except TviewError as exc:  # damaged where the summary reads: this rank says so, the others go on
            self.problems[rank] = str(exc)
            return None

    def rank_status(self) -> dict[int, dict]:
        """Per rank: recorded steps, last step, whether it closed cleanly, records dropped, first and
        last wall time, problem (None when readable); from rank_summaries()."""
        keys = ("steps", "last_step", "closed", "dropped", "first_wall", "last_wall", "problem")
        return {rank: {k: s[k] for k in keys} for rank, s in self.rank_summaries().items()}

    @_guarded
    def first_nonfinite(self, rank: int = 0) -> dict[str, dict]:
        """Where NaN/Inf first appeared on a rank, kept by the writer (no scan):
        {"layers": {layer: step}, "scalars": {name: step}, "tensors": {"activation"|"gradient"|...: {layer: step}}}.
        Absent names: never."""
        shard = self.shard(rank)
        group = shard.file["status/first_nonfinite"]
        first = {table: shard.dataset("status", f"first_nonfinite/{table}")[:] for table in group}
        return rank_summary.first_nonfinite_map(first, self.layers, self.scalar_names(rank),
                                                {t: spec.reads for t, spec in shard.tables.items()})

    def stat_across_ranks(self, name: str, layer: str | int, ranks=None, max_points: int | None = None) -> dict:
        """{rank: (steps, values)} of one layer statistic on every readable rank (or `ranks`), empty arrays
        where a rank has none or cannot be read (its problem then in run.problems). Hundreds of ranks are
        read by several processes (tview.store.parallel)."""
        self.layer_index(layer)
        return self._across(lambda share: {r: self._or_empty(self.stat, name, layer, r, max_points=max_points)
                                           for r in share}, ranks)

    def scalar_across_ranks(self, name: str, ranks=None, max_points: int | None = None) -> dict:
        """{rank: (steps, values)} of one scalar on every readable rank (or `ranks`), as stat_across_ranks."""
        return self._across(lambda share: {r: self._or_empty(self.scalar, name, r, max_points=max_points)
                                           for r in share}, ranks)

    def _across(self, read, ranks) -> dict:
        ranks = list(self.ranks if ranks is None else ranks)
        return parallel.read_across(ranks, read, extra=lambda share: {r: self.problems[r] for r in share
                                                                      if r in self.problems},
                                    merge_extra=self._found_bad)

    def _found_bad(self, problems: dict[int, str]):
        """Shards another process found unreadable (tview.store.parallel): left out here too."""
        for rank, why in problems.items():
            self._leave_out(rank, why)

    @staticmethod
    def _or_empty(read, *args, **kwargs):
        try:
            return read(*args, **kwargs)
        except (KeyError, TviewError):
            return np.zeros(0, dtype=np.int64), np.zeros(0)

    def frame(self, stats=None, layers=None, ranks=None, scalars=None, max_points=None, *, progress=None):
        """A pandas DataFrame in long form (step, rank, layer, statistic, channel, value) of the statistics
        and scalars asked for (all by default); see tview.store.frame. Needs pandas (tview[export])."""
        from tview.store.frame import frame
        return frame(self, stats, layers, ranks, scalars, max_points, progress=progress)

    def stopped_ranks(self) -> dict[int, int | None]:
        """Ranks that stopped early: not closed cleanly and behind the furthest rank. rank -> last step."""
        status = self.rank_status()
        furthest = max((s["last_step"] for s in status.values() if s["last_step"] is not None), default=None)
        return {r: s["last_step"] for r, s in status.items()
                if not s["closed"] and (s["last_step"] is None or s["last_step"] < (furthest or 0))}

    @_guarded
    def close(self):
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._first = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Run({self.path!r}, ranks={len(self.ranks)}, layers={len(self.layers)})"


def _shard_summary(shard: ShardReader, scalar_names: list[str], first_nonfinite: dict) -> dict:
    """A rank summary computed from its shard (what its writer would have written beside it)."""
    n = shard.length(schema.TABLE_SCALARS)
    steps, walls = shard.read(schema.TABLE_SCALARS, "wall_time", slice(0, n, max(n - 1, 1)))  # first and last
    last = (int(steps[-1]), float(walls[-1])) if n else None
    lengths = {t: shard.length(t) for t in shard.tables}
    trend = rank_summary.trend_from_rows(n, shard.read, scalar_names, shard.tables, lengths)
    return rank_summary.summary_dict(shard.rank, shard.world_size, trend, last, float(walls[0]) if n else None,
                                     bool(shard.dataset("status", "closed")[0] == 1),
                                     int(shard.dataset("status", "dropped")[0]), first_nonfinite)


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
