"""Per-rank shard writer: one SWMR HDF5 file per rank, tables that grow one row per recorded step."""

from __future__ import annotations

import json
import os
import time

import h5py
import numpy as np

from tview.errors import CorruptShardError, RunExistsError, SchemaVersionError
from tview.store import schema
from tview.store.records import ShardLayout, StepRecord

_STR = h5py.string_dtype("utf-8")
_ROWS_PER_CHUNK = 256  # along the step axis, for the small per-step tables


def _chunk_rows(row_bytes: int) -> int:
    """Rows per chunk: about 64 KiB a chunk, between 1 and _ROWS_PER_CHUNK rows."""
    return int(max(1, min(_ROWS_PER_CHUNK, (64 * 1024) // max(row_bytes, 1))))


def _create_column(group: h5py.Group, name: str, row_shape: tuple, dtype, fill, row_chunks=False):
    """An extendable column; `row_chunks`: one chunk per row (snapshots, large rows written whole).

    Nothing is compressed: gzip cost ~16 ms per MB on the training machine (it ran in the flush,
    holding the GIL) and saved 1% on conv filters, 13-34% on feature maps.
    """
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return group.create_dataset(
        name,
        shape=(0,) + tuple(row_shape),
        maxshape=(None,) + tuple(row_shape),
        chunks=(1 if row_chunks else _chunk_rows(row_bytes),) + tuple(row_shape),
        dtype=dtype,
        fillvalue=fill,
    )


def refuse_existing_shard(path: str, hint: str) -> None:
    """Raise RunExistsError if `path` (a rank's shard) exists; `hint` says how to go on."""
    if os.path.exists(path):
        raise RunExistsError(f"{path} already holds a recorded run; {hint}")


class _Column:
    """One dataset of a table, with what appending needs kept at hand (h5py's properties are slow)."""

    def __init__(self, dset: h5py.Dataset):
        self.dset = dset
        self.row_shape = tuple(dset.shape[1:])
        self.dtype = dset.dtype
        self.fill = dset.fillvalue

    def write(self, n0: int, block: np.ndarray):
        """Grow to n0 + len(block) rows and write block there (HDF5's low-level calls: no h5py checks)."""
        k = block.shape[0]
        self.dset.id.set_extent((n0 + k,) + self.row_shape)
        space = self.dset.id.get_space()
        space.select_hyperslab((n0,) + (0,) * len(self.row_shape), (k,) + self.row_shape)
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self.dset.id.write(h5py.h5s.create_simple(block.shape), space, block)

    def grow(self, n: int):
        self.dset.id.set_extent((n,) + self.row_shape)


class _Table:
    """A group whose datasets all grow together along axis 0; 'step' is resized last."""

    def __init__(self, group: h5py.Group):
        self.group = group
        self.columns: dict[str, _Column] = {}
        self._collect(group, "")
        self._step = _Column(group["step"])
        self._n = int(group["step"].shape[0])

    def _collect(self, group: h5py.Group, prefix: str):
        for key, item in group.items():
            if isinstance(item, h5py.Group):
                self._collect(item, prefix + key + "/")
            elif prefix or key not in ("step", "names"):  # scalars/names grows on its own
                self.columns[prefix + key] = _Column(item)

    def __len__(self) -> int:
        return self._n

    def append(self, steps: list[int], rows: list[dict[str, np.ndarray]]):
        """Append len(steps) rows; a column missing from a row keeps its fill value (NaN or 0)."""
        n0, k = self._n, len(steps)
        for name, col in self.columns.items():
            values = [row.get(name) for row in rows]
            present = [i for i, v in enumerate(values) if v is not None]
            if not present:
                col.grow(n0 + k)  # unwritten rows read as the fill value
                continue
            if len(present) == k:
                block = np.stack(values)
            else:
                block = np.full((k,) + col.row_shape, col.fill, dtype=col.dtype)
                for i in present:
                    block[i] = values[i]
            col.write(n0, block)  # one write per column and batch
        self._step.write(n0, np.asarray(steps, dtype=np.int64))
        self._n = n0 + k


class ShardWriter:
    """Writes one rank's shard. Created on the first write, when the layout is known."""

    def __init__(self, path: str, layout: ShardLayout, resume: bool = False):
        self.path = path
        self.layout = layout
        self.layer_index = {name: i for i, name in enumerate(layout.layer_names)}
        if resume and os.path.exists(path):
            self.file = self._open_for_resume(path)
        else:
            self.file = self._create(path)
        self.file.swmr_mode = True
        self.tables = {
            name: _Table(self.file[name])
            for name in (schema.TABLE_SCALARS, schema.TABLE_STATS, schema.TABLE_HIST, schema.TABLE_SNAPSHOTS)
        }
        self._names = self.file[schema.TABLE_SCALARS]["names"]
        self.scalar_columns = {bytes(n).decode(): i for i, n in enumerate(self._names[:])}
        status = self.file["status"]
        self._first_layer = status["first_nonfinite_layer"][:] if "first_nonfinite_layer" in status else None
        self._first_scalar = status["first_nonfinite_scalar"][:] if "first_nonfinite_scalar" in status else None
        self.dropped_scalar_names: set[str] = set()

    # -- creation -------------------------------------------------------------------------
    def _create(self, path: str) -> h5py.File:
        lay = self.layout
        L = len(lay.layers)
        f = h5py.File(path, "w", libver=schema.LIBVER)
        f.attrs["tview_schema_version"] = schema.SCHEMA_VERSION
        f.attrs["rank"] = lay.rank
        f.attrs["world_size"] = lay.world_size
        f.attrs["run_id"] = lay.run_id
        f.attrs["created_unix"] = time.time()
        f.attrs["layers_json"] = json.dumps(lay.layers)
        f.attrs["trajectory_dims"] = lay.trajectory_dims

        sc = f.create_group(schema.TABLE_SCALARS)
        _create_column(sc, "step", (), np.int64, -1)
        _create_column(sc, "wall_time", (), np.float64, np.nan)
        _create_column(sc, "values", (schema.MAX_SCALARS,), np.float64, np.nan)
        sc.create_dataset("names", shape=(0,), maxshape=(schema.MAX_SCALARS,), chunks=(schema.MAX_SCALARS,),
                          dtype=f"S{schema.SCALAR_NAME_LEN}")

        st = f.create_group(schema.TABLE_STATS)
        _create_column(st, "step", (), np.int64, -1)
        for name in schema.LAYER_STATS:
            _create_column(st, name, (L,), np.float32, np.nan)
        _create_column(st, "trajectory", (L, lay.trajectory_dims), np.float32, np.nan)
        for name in schema.CHANNEL_STATS:
            g = st.create_group(name)
            for layer in lay.layers:
                if layer.get("channels"):
                    _create_column(g, layer["name"], (layer["channels"],), np.float32, np.nan)

        hi = f.create_group(schema.TABLE_HIST)
        _create_column(hi, "step", (), np.int64, -1)
        for kind in schema.HIST_KINDS:
            _create_column(hi, kind, (L, schema.HIST_BINS), np.uint32, 0)
        f.create_dataset("hist_edges", data=schema.hist_edges())

        sn = f.create_group(schema.TABLE_SNAPSHOTS)
        _create_column(sn, "step", (), np.int64, -1)
        fg, mg = sn.create_group("filters"), sn.create_group("feature_maps")
        for layer, shape in lay.filter_shapes.items():
            _create_column(fg, layer, tuple(shape), np.float32, np.nan, row_chunks=True)
        for layer, shape in lay.feature_map_shapes.items():
            _create_column(mg, layer, tuple(shape), np.float32, np.nan, row_chunks=True)
        probe = f.create_group("probe")
        if lay.probe_inputs is not None:
            probe.create_dataset("inputs", data=np.asarray(lay.probe_inputs, dtype=np.float32))
        if lay.probe_targets is not None:
            probe.create_dataset("targets", data=np.asarray(lay.probe_targets))

        status = f.create_group("status")
        status.create_dataset("closed", shape=(1,), dtype=np.int8, data=[0])
        status.create_dataset("dropped", shape=(1,), dtype=np.int64, data=[0])
        # First step at which a layer's gradients or activations held NaN/Inf (-1: never), and the
        # same for each scalar column: kept up to date so a reader finds them without a scan.
        status.create_dataset("first_nonfinite_layer", data=np.full(L, -1, dtype=np.int64))
        status.create_dataset("first_nonfinite_scalar", data=np.full(schema.MAX_SCALARS, -1, dtype=np.int64))
        return f

    def _open_for_resume(self, path: str) -> h5py.File:
        try:
            f = h5py.File(path, "a", libver=schema.LIBVER)
        except OSError as exc:
            raise CorruptShardError(f"{path}: cannot be reopened to resume: {exc}") from None
        version = int(f.attrs.get("tview_schema_version", -1))
        if version != schema.SCHEMA_VERSION:
            f.close()
            raise SchemaVersionError(f"{path}: written with store schema {version}, this tview writes "
                                     f"{schema.SCHEMA_VERSION}; resume into a new run folder instead")
        layers = [layer["name"] for layer in json.loads(f.attrs["layers_json"])]
        if layers != self.layout.layer_names:
            f.close()
            raise CorruptShardError(f"{path}: its layers {layers} differ from the model's "
                                    f"{self.layout.layer_names}; cannot resume a different model")
        f["status/closed"][0] = 0
        return f

    # -- writing --------------------------------------------------------------------------
    def _scalar_row(self, scalars: dict[str, float]) -> np.ndarray:
        row = np.full(schema.MAX_SCALARS, np.nan)
        names = self._names
        for name, value in scalars.items():
            col = self.scalar_columns.get(name)
            if col is None:
                if len(self.scalar_columns) >= schema.MAX_SCALARS:
                    self.dropped_scalar_names.add(name)
                    continue
                col = len(self.scalar_columns)
                names.resize(col + 1, axis=0)
                names[col] = name.encode()[: schema.SCALAR_NAME_LEN]
                self.scalar_columns[name] = col
            row[col] = value
        return row

    def write(self, records: list[StepRecord]):
        """Append a batch of records (each to the tables it has data for)."""
        steps = [r.step for r in records]
        self.tables[schema.TABLE_SCALARS].append(
            steps, [{"wall_time": np.float64(r.wall_time), "values": self._scalar_row(r.scalars)} for r in records])
        self._note_nonfinite(records)
        with_stats = [r for r in records if r.stats is not None]
        if with_stats:
            rows = []
            for r in with_stats:
                row = dict(r.stats)
                if r.trajectory is not None:
                    row["trajectory"] = r.trajectory
                for stat, per_layer in (r.channel_stats or {}).items():
                    for layer, values in per_layer.items():
                        key = f"{stat}/{layer}"
                        col = self.tables[schema.TABLE_STATS].columns.get(key)
                        if col is not None and col.row_shape == values.shape:
                            row[key] = values
                rows.append(row)
            self.tables[schema.TABLE_STATS].append([r.step for r in with_stats], rows)
        with_hist = [r for r in records if r.hist is not None]
        if with_hist:
            self.tables[schema.TABLE_HIST].append([r.step for r in with_hist], [r.hist for r in with_hist])
        with_snap = [r for r in records if r.filters or r.feature_maps]
        if with_snap:
            rows = []
            for r in with_snap:
                row = {f"filters/{k}": v for k, v in (r.filters or {}).items()}
                row.update({f"feature_maps/{k}": v for k, v in (r.feature_maps or {}).items()})
                rows.append(row)
            self.tables[schema.TABLE_SNAPSHOTS].append([r.step for r in with_snap], rows)

    def _note_nonfinite(self, records: list[StepRecord]):
        """Keep status/first_nonfinite_{layer,scalar} (held in memory, written when they change)."""
        if self._first_layer is None:  # a shard from before these were kept
            return
        changed = False
        for r in records:
            for name, value in r.scalars.items():
                col = self.scalar_columns.get(name)
                if col is not None and self._first_scalar[col] < 0 and not np.isfinite(value):
                    self._first_scalar[col], changed = r.step, True
        with_stats = [r for r in records if r.stats is not None]
        if with_stats and (self._first_layer < 0).any():
            # per record and layer: any NaN or Inf counted (a statistic a record lacks, or NaN: not measured)
            bad = np.zeros((len(with_stats), len(self._first_layer)), dtype=bool)
            for i, r in enumerate(with_stats):
                for k in schema.NONFINITE_STATS:
                    if k in r.stats:
                        bad[i] |= np.asarray(r.stats[k]) > 0  # NaN > 0 is False
            hit = bad.any(axis=0) & (self._first_layer < 0)
            if hit.any():
                steps = np.array([r.step for r in with_stats])
                self._first_layer[hit] = steps[bad.argmax(axis=0)[hit]]
                changed = True
        if changed:
            self.file["status/first_nonfinite_scalar"][:] = self._first_scalar
            self.file["status/first_nonfinite_layer"][:] = self._first_layer

    def set_dropped(self, count: int):
        self.file["status/dropped"][0] = count

    def flush(self):
        self.file.flush()

    def close(self, clean: bool = True):
        if self.file:
            if clean:
                self.file["status/closed"][0] = 1
            self.file.flush()
            self.file.close()
            self.file = None
