"""Per-rank shard writer: one SWMR HDF5 file per rank; tables that grow one row per step they ran on.

Layout (schema version 2, see docs/store-format.md): `scalars` (every recorded step), one table per
probe under `probes/<table>` (a row only on steps the probe ran, a `measured` [n, L] mask saying
which layers it measured), `snapshots`, `probe` (the probe batch) and `status`.
"""

from __future__ import annotations

import json
import math
import os
import time

import h5py
import numpy as np

from tview.errors import CorruptShardError, SchemaVersionError
from tview.store import rank_summary, schema
from tview.store.columns import (
    CHUNK_BYTES,
    TableWriter,
    check_room,
    checked_array,
    create_column,
    create_probe_table,
    payload_bytes,
    table_rows,
    unknown_columns,
)
from tview.store.columns import chunk_rows as chunk_rows  # importable from here, as before
from tview.store.columns import refuse_existing_shard as refuse_existing_shard
from tview.store.records import ShardLayout, StepRecord, TableRow


class ShardWriter:
    """Writes one rank's shard. Created on the first write, when the layout is known."""

    def __init__(self, path: str, layout: ShardLayout, resume: bool = False):
        self.path = path
        self.layout = layout
        check_room(path, 128 * 1024)  # the file's metadata
        self.specs = {spec.name: spec for spec in layout.tables}
        if resume and os.path.exists(path):
            self.file = self._open_for_resume(path)
        else:
            self.file = self._create(path)
        self.file.swmr_mode = True
        self._inode = os.stat(path).st_ino
        self.tables = {name: TableWriter(self.file[schema.PROBES][name]) for name in self.specs}
        for name in (schema.TABLE_SCALARS, schema.TABLE_SNAPSHOTS):
            self.tables[name] = TableWriter(self.file[name])
        self._names = self.file[schema.TABLE_SCALARS]["names"]
        self.scalar_columns = {bytes(n).decode("utf-8", "replace"): i for i, n in enumerate(self._names[:])}
        first = self.file["status/first_nonfinite"]
        self._first = {name: first[name][:] for name in first}
        self._skips, self._skip_start = 0, -1  # consecutive records the optimizer skipped, and the first's step
        if resume:  # a resumed shard: those it ends with
            self._count_trailing_skips()
        self._dropped = int(self.file["status/dropped"][0])
        self.rebuild_summary()
        # bytes the last write added to the file; before any, what the first chunk of every column takes
        self._growth = sum(int(np.prod(c.dset.chunks)) * c.dtype.itemsize for t in self.tables.values()
                           for c in list(t.columns.values()) + [t._step])

    # -- creation -------------------------------------------------------------------------
    def _create(self, path: str) -> h5py.File:
        # No chunk cache: every write goes to the file at once. With one, a write that failed (full
        # disk) left dirty chunks in it that HDF5 could neither write nor drop, and closing their
        # datasets crashed the process (SIGSEGV in H5D_close); appends write whole row blocks, so
        # the cache saved little.
        f = h5py.File(path, "w", libver=schema.LIBVER, rdcc_nbytes=0)
        try:
            self._build(f)
        except BaseException:  # a full disk while creating: let go of the file before raising
            f.close()
            raise
        return f

    def _build(self, f: h5py.File):
        lay = self.layout
        f.attrs.update({"tview_schema_version": schema.SCHEMA_VERSION, "rank": lay.rank, "world_size": lay.world_size,
                        "run_id": lay.run_id, "created_unix": time.time(), "layers_json": json.dumps(lay.layers),
                        "tables_json": json.dumps([json.loads(spec.to_json()) for spec in lay.tables])})
        sc = f.create_group(schema.TABLE_SCALARS)
        create_column(sc, "step", (), np.int64)
        create_column(sc, "wall_time", (), np.float64)
        create_column(sc, "values", (schema.MAX_SCALARS,), np.float64)
        create_column(sc, "measured", (schema.MAX_SCALARS,), np.uint8)
        sc.create_dataset("names", shape=(0,), maxshape=(schema.MAX_SCALARS,), chunks=(schema.MAX_SCALARS,),
                          dtype=f"S{schema.SCALAR_NAME_LEN}")
        probes = f.create_group(schema.PROBES)
        for spec in lay.tables:
            create_probe_table(probes, spec, lay)
        checked_array(f, "hist_edges", schema.hist_edges())
        self._create_snapshots(f)
        status = f.create_group("status")
        checked_array(status, "closed", np.zeros(1, dtype=np.int8))
        checked_array(status, "dropped", np.zeros(1, dtype=np.int64))
        # First step at which a table's NaN/Inf counts were > 0 (or its weight sums NaN/Inf), per layer, and the same
        # for each scalar column (-1: never): kept up to date so a reader finds them without a scan.
        first = status.create_group("first_nonfinite")
        for spec in lay.tables:
            if any(c.watched for c in spec.columns):
                checked_array(first, spec.name, np.full(len(lay.layers), -1, dtype=np.int64))
        checked_array(first, schema.TABLE_SCALARS, np.full(schema.MAX_SCALARS, -1, dtype=np.int64))

    def _create_snapshots(self, f: h5py.File):
        lay = self.layout
        sn = f.create_group(schema.TABLE_SNAPSHOTS)
        create_column(sn, "step", (), np.int64, target=CHUNK_BYTES["detail"])
        fg, mg = sn.create_group("filters"), sn.create_group("feature_maps")
        for layer, shape in lay.filter_shapes.items():
            create_column(fg, layer, tuple(shape), np.float32, row_chunks=True)
        for layer, shape in lay.feature_map_shapes.items():
            create_column(mg, layer, tuple(shape), np.float32, row_chunks=True)
        probe = f.create_group("probe")
        if lay.probe_inputs is not None:
            checked_array(probe, "inputs", np.asarray(lay.probe_inputs, dtype=np.float32))
        if lay.probe_targets is not None:
            checked_array(probe, "targets", np.asarray(lay.probe_targets))

    def _open_for_resume(self, path: str) -> h5py.File:
        try:
            f = h5py.File(path, "a", libver=schema.LIBVER, rdcc_nbytes=0)
        except OSError as exc:
            raise CorruptShardError(f"{path}: cannot be reopened to resume: {exc}") from None
        problem = self._resume_problem(f)
        if problem:
            f.close()
            raise problem
        f["status/closed"][0] = 0
        return f

    def _resume_problem(self, f: h5py.File) -> Exception | None:
        version = int(f.attrs.get("tview_schema_version", -1))
        if version != schema.SCHEMA_VERSION:
            return SchemaVersionError(f"{self.path}: written with store schema {version}, this tview writes "
                                      f"{schema.SCHEMA_VERSION}; resume into a new run folder instead")
        layers = [layer["name"] for layer in json.loads(f.attrs["layers_json"])]
        if layers != self.layout.layer_names:
            return CorruptShardError(f"{self.path}: its layers {layers} differ from the model's "
                                     f"{self.layout.layer_names}; cannot resume a different model")
        have = sorted(f[schema.PROBES])
        if have != sorted(self.specs):
            return CorruptShardError(f"{self.path}: records the tables {have}, this Recorder {sorted(self.specs)} "
                                     f"(another preset?); resume with the same preset or into a new folder")
        return None

    # -- writing --------------------------------------------------------------------------
    def _scalar_row(self, r: StepRecord) -> dict[str, np.ndarray]:
        values, measured = np.full(schema.MAX_SCALARS, np.nan), np.zeros(schema.MAX_SCALARS, dtype=np.uint8)
        for name, value in r.scalars.items():
            col = self.scalar_columns.get(name)
            if col is None:
                col = self._new_scalar_column(name)
            values[col], measured[col] = value, 1
        return {"wall_time": np.float64(r.wall_time), "values": values, "measured": measured}

    def _new_scalar_column(self, name: str) -> int:
        encoded = name.encode("utf-8")
        if len(encoded) > schema.SCALAR_NAME_LEN or len(self.scalar_columns) >= schema.MAX_SCALARS:
            raise ValueError(f"scalar {name!r}: at most {schema.MAX_SCALARS} scalars of at most "
                             f"{schema.SCALAR_NAME_LEN} UTF-8 bytes each")
        col = len(self.scalar_columns)
        self._names.resize(col + 1, axis=0)
        self._names[col] = encoded
        self.scalar_columns[name] = col
        return col

    def write(self, records: list[StepRecord]):
        """Append a batch of records: scalars for every record, each probe table for the records
        that carry its row, snapshots for those that have one. Refused (OSError) before anything is
        written when the disk may not hold it."""
        check_room(self.path, 2 * max(payload_bytes(records), self._growth))
        size = os.path.getsize(self.path)
        self._append(records)
        self._growth = max(os.path.getsize(self.path) - size, 0)

    def _append(self, records: list[StepRecord]):
        self.tables[schema.TABLE_SCALARS].append([r.step for r in records], [self._scalar_row(r) for r in records])
        for name, spec in self.specs.items():
            with_row = [r for r in records if name in r.tables]
            if with_row:
                rows = [self._checked(spec, r.tables[name]) for r in with_row]
                self.tables[name].append([r.step for r in with_row], table_rows(spec, rows, self.layout.layer_names))
        unknown = sorted(set(t for r in records for t in r.tables) - set(self.specs))
        if unknown:
            raise ValueError(f"{self.path}: records rows of tables {unknown} that this shard does not declare "
                             f"(declared: {sorted(self.specs)})")
        self._write_snapshots(records)
        self._note_nonfinite(records)
        self._note_trend(records)

    def _note_trend(self, records: list[StepRecord]):
        """Keep the rank summary's trend: chosen scalars and whole-network numbers of every k-th record."""
        if not records:
            return
        names = {n for r in records for n in r.scalars if rank_summary.trend_scalar(n)}
        columns = {n: np.array([r.scalars.get(n, np.nan) for r in records], dtype=np.float64) for n in names}
        for table, spec in self.specs.items():
            for col in spec.columns:
                if col.name in rank_summary.WHOLE_NETWORK and col.kind == schema.LAYER:
                    columns[col.name] = self._whole_network(table, col.name, records)
        self._trend.extend([r.step for r in records], [r.wall_time for r in records], columns)
        if self._first_wall is None:
            self._first_wall = float(records[0].wall_time)
        self._last = (int(records[-1].step), float(records[-1].wall_time))

    def _whole_network(self, table: str, column: str, records: list[StepRecord]) -> np.ndarray:
        L = len(self.layout.layers)
        rows = np.full((len(records), L), np.nan)
        for i, r in enumerate(records):
            row = r.tables.get(table)
            if row is not None and column in row.values:
                rows[i] = np.where(np.asarray(row.measured, dtype=bool), np.asarray(row.values[column], np.float64),
                                   np.nan)
        return rank_summary.whole_network(column, rows)

    def rebuild_summary(self):
        """The rank summary's state from what the file holds (a resumed shard, or one written in bulk)."""
        def read(table: str, column: str, sel: slice):
            g = self.file[schema.table_path(table)]
            return g["step"][sel], g[column][sel]
        rows = int(self.file[schema.TABLE_SCALARS]["step"].shape[0])
        names = [bytes(n).decode("utf-8", "replace") for n in self.file[schema.TABLE_SCALARS]["names"][:]]
        lengths = {t: int(self.file[schema.PROBES][t]["step"].shape[0]) for t in self.specs}
        self._trend = rank_summary.trend_from_rows(rows, read, names, self.specs, lengths)
        wall = self.file[schema.TABLE_SCALARS]["wall_time"]
        self._first_wall = float(wall[0]) if rows else None
        self._last = (int(self.file[schema.TABLE_SCALARS]["step"][rows - 1]), float(wall[rows - 1])) if rows else None

    def summary(self, closed: bool = False) -> dict:
        """The rank summary as it stands (see tview.store.rank_summary)."""
        names = sorted(self.scalar_columns, key=self.scalar_columns.get)
        first = rank_summary.first_nonfinite_map(self._first, self.layout.layer_names, names,
                                                 {t: s.reads for t, s in self.specs.items()})
        return rank_summary.summary_dict(self.layout.rank, self.layout.world_size, self._trend, self._last,
                                         self._first_wall, closed, self._dropped, first)

    def write_summary(self, closed: bool = False):
        rank_summary.write_summary(self.path, self.summary(closed))

    def _checked(self, spec: schema.TableSpec, row: TableRow) -> TableRow:
        """A row whose columns are all declared; CHANNEL layers without a value of the declared width
        are marked not measured (never stored as if measured)."""
        unknown = unknown_columns(spec, row)
        if unknown:
            raise ValueError(f"{self.path}: probe table {spec.name!r} returned {unknown}, which it does not "
                             f"declare (declared: {list(spec.names)}); add them to its TableSpec")
        channel_cols = [c.name for c in spec.columns if c.kind == schema.CHANNEL]
        if channel_cols:
            measured = np.array(row.measured, dtype=bool)
            for c in channel_cols:
                widths, values = self.layout.channel_widths.get(c, {}), row.values.get(c) or {}
                right = {layer for layer, v in values.items()
                         if (v.shape if isinstance(v, np.ndarray) else np.shape(v)) == (widths.get(layer, -1),)}
                measured &= [layer in right for layer in self.layout.layer_names]
            row = TableRow(measured, row.values, row.sample_n, row.total_n)
        return row

    def _write_snapshots(self, records: list[StepRecord]):
        with_snap = [r for r in records if r.filters or r.feature_maps]
        if with_snap:
            rows = []
            for r in with_snap:
                row = {f"filters/{k}": v for k, v in (r.filters or {}).items()}
                row.update({f"feature_maps/{k}": v for k, v in (r.feature_maps or {}).items()})
                rows.append(row)
            self.tables[schema.TABLE_SNAPSHOTS].append([r.step for r in with_snap], rows)

    def _note_nonfinite(self, records: list[StepRecord]):
        """Keep status/first_nonfinite/* (held in memory, written when they change)."""
        changed = set()
        first = self._first[schema.TABLE_SCALARS]
        for r in records:
            skip_start = self._skipped_run(r)
            for name, value in r.scalars.items():
                if not math.isfinite(value):  # (a Python float: no numpy call per scalar)
                    col = self.scalar_columns.get(name)
                    if col is not None and first[col] < 0:
                        first[col] = r.step
                        changed.add(schema.TABLE_SCALARS)
            for table, row in r.tables.items():
                step = r.step
                if skip_start is not None and self.specs.get(table) and self.specs[table].reads == "gradient":
                    if self._skips < schema.SKIPPED_RUN:
                        continue  # the scaler's own skip: its NaN/Inf gradients are no fault
                    step = skip_start  # a run of skips: it counts from its first step
                if table in self._first and self._mark_nonfinite(table, row, step):
                    changed.add(table)
        for name in changed:
            self.file["status/first_nonfinite"][name][:] = self._first[name]

    def _count_trailing_skips(self) -> None:
        """_skips and _skip_start from the records the shard ends with: a run of skips that a resume interrupted goes
        on counting. The last SKIPPED_RUN records' scalars are read back and counted by _skipped_run, the rule the
        records written since follow."""
        table = self.file[schema.TABLE_SCALARS]
        n = int(table["step"].shape[0])
        lo = max(n - schema.SKIPPED_RUN, 0)
        names = [(name, col) for name, col in self.scalar_columns.items() if name in ("optimizer_skipped", "loss")]
        values, measured, steps = table["values"][lo:n], table["measured"][lo:n], table["step"][lo:n]
        for row, seen, step in zip(values, measured, steps):
            self._skipped_run(StepRecord(step=int(step), wall_time=0.0,
                                         scalars={name: float(row[col]) for name, col in names if seen[col]}))

    def _skipped_run(self, r: StepRecord) -> int | None:
        """The first step of the run of consecutive skipped records this one belongs to (optimizer_skipped == 1, the
        loss finite where recorded: a NaN loss is a fault whatever the scaler did), or None; self._skips counts it."""
        if r.scalars.get("optimizer_skipped") != 1 or not np.isfinite(r.scalars.get("loss", 0.0)):
            self._skips = 0
            return None
        self._skips += 1
        if self._skips == 1:
            self._skip_start = r.step
        return self._skip_start

    def _mark_nonfinite(self, table: str, row: TableRow, step: int) -> bool:
        first = self._first[table]
        bad = np.zeros(len(first), dtype=bool)
        for col in self.specs[table].columns:
            if col.nonfinite and col.name in row.values:
                value = np.asarray(row.values[col.name])
                if value.any():  # nearly always all 0 (a NaN is truthy): nothing more to look at
                    bad |= np.nan_to_num(value.astype(np.float64)) > 0
            elif col.nonfinite_value and col.name in row.values:
                bad |= ~np.isfinite(np.asarray(row.values[col.name], dtype=np.float64))
        hit = bad & np.asarray(row.measured, dtype=bool) & (first < 0)
        first[hit] = step
        return bool(hit.any())

    def set_dropped(self, count: int):
        """status/dropped := count (written only when it changes: an HDF5 write per flush costs 0.6 ms)."""
        if int(count) != self._dropped:
            self.file["status/dropped"][0] = count
            self._dropped = int(count)

    def flush(self):
        """Flush to disk, then check the file is still where readers look for it (a removed or replaced
        run folder would otherwise swallow every later write without an error)."""
        self.file.flush()
        try:
            moved = os.stat(self.path).st_ino != self._inode
        except OSError:
            moved = True
        if moved:
            raise OSError(f"{self.path} was removed or replaced while recording (run folder deleted?)")
        self.write_summary()

    def close(self, clean: bool = True):
        if self.file:
            if clean:
                self.file["status/closed"][0] = 1
            self.file.flush()
            self.release()
            self.write_summary(closed=clean)  # after the file's last change: a summary older than its shard is stale

    def release(self):
        """Close every dataset handle, then the file; nothing of it is left for garbage collection
        (after a failed write, HDF5 meeting those handles at interpreter exit crashed the process)."""
        handles = [c.dset for t in self.tables.values() for c in t.columns.values()]
        handles += [t._step.dset for t in self.tables.values()] + [self._names]
        self.tables, self._names = {}, None
        for dset in handles:
            try:
                dset.id.close()
            except Exception:  # already closed, or the file is in a failed state: let go anyway
                pass
        file, self.file = self.file, None
        if file is not None:
            try:
                file.close()
            except Exception:
                pass
