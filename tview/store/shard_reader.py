"""One rank's shard read back: the reader's only module that reads HDF5 datasets, low-level where it pays.

Every read returns numpy arrays; a damaged object comes out as CorruptShardError naming the file. What a
shard holds is discovered from the shard itself (each probe table carries its declaration).
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from tview.errors import CorruptShardError, TviewError
from tview.store import schema, settled
from tview.store.h5dataset import OpenDataset
from tview.store.h5open import check_shard_file, open_shard_id
from tview.store.lock import serialized
from tview.store.shard_header import Header, identity, known_header, read_header, remember_header

_OPEN_FAILURES = (KeyError, OSError, ValueError, TypeError, RuntimeError, AttributeError, RecursionError)
_READ_FAILURES = (OSError, ValueError, RuntimeError)


def strided(n: int, max_points: int | None) -> slice:
    """Evenly spaced rows keeping at most max_points of n (all of them for None), the first included."""
    if not max_points or n <= max_points:
        return slice(0, n)
    stride = -(-n // max_points)
    return slice(0, n, stride)


def _read_only(arrays: tuple) -> tuple:
    for a in arrays:
        a.flags.writeable = False
    return arrays


KEEP_ROWS = 4096  # a table's steps and measured flags are kept (one table per shard) up to this many rows


class ShardReader:
    """One rank's shard, opened read-only in SWMR mode; `rank`: the rank its file name says."""

    def __init__(self, path: str, rank: int | None = None, checked: tuple | None = None):
        """checked: (identity, writer_closed) of the file when check_shard_file passed it, if known."""
        self.path = path
        self._key = key = identity(path)
        known = known_header(key)  # its file checked when first opened, and unchanged since
        header, closed = known if known else (None, checked[1] if checked and checked[0] == key else None)
        if known is None and closed is None:
            closed = check_shard_file(path)
        self.fid = open_shard_id(path, checked=True)
        self._file: h5py.File | None = None
        try:
            self._take_header(header or read_header(self), rank)
        except TviewError:
            self.close()
            raise
        except _OPEN_FAILURES as exc:
            self.close()
            raise CorruptShardError(f"{path}: damaged tview shard: {type(exc).__name__}: {exc}") from None
        remember_header(key, self._header, closed)
        # HDF5 shares one file's metadata between its opens in a process: one made while a writer had it open
        # may hold what that writer changed since, so refresh when another is open
        alone = h5py.h5f.get_obj_count(self.fid, h5py.h5f.OBJ_FILE) == 1
        self._settled = key[2:4] if closed and alone else False

    @property
    def file(self) -> h5py.File:
        """The shard as an h5py File (made on first use: most reads need only the file id)."""
        if self._file is None:
            self._file = h5py.File(self.fid)
        return self._file

    def _take_header(self, header: Header, rank: int | None):
        if rank is not None and header.rank != rank:
            raise CorruptShardError(f"{self.path}: holds rank {header.rank}'s data under rank {rank}'s name "
                                    f"(a copied or renamed shard?)")
        self._header = header
        self.version, self.rank, self.world_size = header.version, header.rank, header.world_size
        lay = header.layout  # shared by every shard of the run: never changed here
        self.layer_info, self.tables, self.layers, self.columns = lay.layer_info, lay.tables, lay.layers, lay.columns
        self._shapes, self._dtypes, self._checked = lay.shapes, lay.dtypes, set()
        self._settled = False

    def _file_stamp(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_size, st.st_mtime_ns

    def _settled_now(self) -> bool:
        """Whether no writer held this shard open when it was opened here, and its file is unchanged since: its
        datasets need no refresh (a refresh reloads a dataset's metadata, half the cost of opening it; a read
        across 1024 ranks opens thousands), and what it holds can be kept (tview.store.settled)."""
        return bool(self._settled) and self._file_stamp() == self._settled

    def _kept(self, fact, read, settled_now: bool = False):
        """read(), kept per file identity when the writer had closed this shard and it is unchanged since
        (settled_now: the caller has just checked that)."""
        if not (settled_now or self._settled_now()):
            return read()
        value = settled.known(self._key, fact)
        if value is None:
            value = read()
            settled.keep(self._key, fact, value)
        return value

    @staticmethod
    def table_path(table: str) -> str:
        return schema.table_path(table)

    @serialized
    def dataset(self, table: str, column: str) -> h5py.Dataset:
        return h5py.Dataset(self._dataset_id(table, column).did)

    @serialized
    def has(self, table: str, column: str) -> bool:
        """Whether the table holds an object of that name (e.g. a channel column's dataset of one layer)."""
        parent, _, name = f"{self.table_path(table)}/{column}".rpartition("/")
        try:
            group = h5py.h5g.open(self.fid, parent.encode())  # kept: its LinkProxy does not keep it open
            return bool(group.links.exists(name.encode()))
        except KeyError:
            return False

    def _dataset_id(self, table: str, column: str, settled_now: bool | None = None) -> OpenDataset:
        """The dataset opened low-level, refreshed unless the shard is settled (settled_now: the caller has just
        checked whether it is), its rows read as its declared dtype where it has one."""
        group = self.table_path(table)
        path = f"{group}/{column}"
        try:
            # one low-level open by full path (a third of two high-level lookups), not kept: two readers of
            # one file in a process (an open run and `tview info`) holding the same dataset open made
            # HDF5's shared metadata cache fail on refresh ("can't insert duplicate key")
            did = h5py.h5d.open(self.fid, path.encode())
            if not (self._settled_now() if settled_now is None else settled_now):
                did.refresh()
            ds = OpenDataset(did, self._dtypes.get(path))
        except (KeyError, FileNotFoundError):
            raise CorruptShardError(f"{self.path}: no {group}/{column} in this shard (damaged or edited?)") from None
        except (OSError, RuntimeError, ValueError, AttributeError, TypeError) as exc:
            raise CorruptShardError(f"{self.path}: {group}/{column} cannot be opened (damaged?): {exc}") from None
        if path not in self._checked:  # the shape its declaration fixes, checked once
            want = self._shapes.get(path)
            if want is not None and ds.shape[1:] != want:
                raise CorruptShardError(f"{self.path}: {path} has shape {ds.shape}, expected "
                                        f"rows of {want} (damaged or edited shard)")
            self._checked.add(path)
        return ds

    def _rows(self, ds: OpenDataset, table: str, column: str, rows: range, layer: int | None = None):
        """Rows (a stepped range) of a dataset, all of each row or its entry `layer` along axis 1, read with
        HDF5's low-level calls (a hyperslab: only the chunks that hold those rows are read)."""
        try:
            return ds.rows(rows, layer)
        except _READ_FAILURES as exc:
            raise CorruptShardError(f"{self.path}: {table}/{column} cannot be read (damaged file?): {exc}") from None

    @serialized
    def length(self, table: str) -> int:
        return int(self._dataset_id(table, schema.STEP).shape[0])

    @serialized
    def steps(self, table: str, rows: slice = slice(None)) -> np.ndarray:
        did = self._dataset_id(table, schema.STEP)
        return self._checked_steps(table, self._rows(did, table, schema.STEP, range(*rows.indices(did.shape[0]))))

    def _checked_steps(self, table: str, steps: np.ndarray) -> np.ndarray:
        if len(steps) and (steps[0] < 0 or np.count_nonzero(steps[1:] <= steps[:-1])):
            raise CorruptShardError(f"{self.path}: {table}/{schema.STEP} holds negative or out-of-order steps "
                                    f"(damaged or edited shard)")
        return steps

    def _get(self, dset: h5py.Dataset, table: str, column: str, selection: tuple) -> np.ndarray:
        try:
            return dset[selection]
        except _READ_FAILURES as exc:
            raise CorruptShardError(f"{self.path}: {table}/{column} cannot be read (damaged file?): {exc}") from None

    @serialized
    def read(self, table: str, column: str, rows: slice, index=()) -> tuple[np.ndarray, np.ndarray]:
        """Rows of a column with the matching steps; never reads past the step column's length."""
        step = self.dataset(table, schema.STEP)
        dset = self.dataset(table, column)
        n = min(step.shape[0], dset.shape[0])
        rows = slice(*rows.indices(n))
        steps = self._checked_steps(table, self._get(step, table, schema.STEP, (rows,)))
        return steps, self._get(dset, table, column, (rows,) + tuple(index))

    @serialized
    def measured(self, table: str, column: str, layer: int, max_points: int | None = None, index=(),
                 kept: bool = False):
        """(steps, values) of one layer's column (`index`: () or (layer,) into its row) at the rows where the
        table measured that layer (each dataset opened and read once, low-level: this runs once per rank when
        a statistic is read across ranks). kept: the answer is kept as _steps_and_mask's (a scalar that
        diagnosis reads several times), read-only."""
        if kept:
            return self._kept(("measured", table, column, layer, max_points, index),
                              lambda: _read_only(self.measured(table, column, layer, max_points, index)))
        now = self._settled_now()
        dset = self._dataset_id(table, column, now)
        rows, steps, measured = self._head_of(table, dset.shape[0], max_points, now)
        values = self._rows(dset, table, column, rows, index[0] if index else None)
        keep = measured[:, layer]
        return steps[keep], values[keep]

    @serialized
    def measured_many(self, table: str, columns: list[tuple[str, int]], max_points: int | None = None) -> list:
        """measured(table, column, layer, max_points) of each (column, layer) (a per-channel statistic's datasets of
        several layers), the table's steps and flags read once where the columns hold the same rows."""
        dids = [self._dataset_id(table, column) for column, _ in columns]
        held = min([d.shape[0] for d in dids], default=0)
        rows, steps, measured = self._head_of(table, held, max_points)
        out = []
        for did, (column, layer) in zip(dids, columns):
            if did.shape[0] != held:  # a live writer grows its columns one by one
                out.append(self.measured(table, column, layer, max_points))
                continue
            keep = measured[:, layer]
            out.append((steps[keep], self._rows(did, table, column, rows)[keep]))
        return out

    def _head_of(self, table: str, held: int, max_points: int | None, settled_now: bool | None = None
                 ) -> tuple[range, np.ndarray, np.ndarray]:
        """(rows, steps, measured [rows, layers]) of the rows (at most max_points, strided) that the table's step
        column, its measured flags and a column of `held` rows all hold. Of a shard its writer had closed (its rows
        never change) the steps and flags are kept (tview.store.settled; the flags as bits, an eighth of the
        bytes), small tables only, and their datasets not even opened again: a read of every layer's column of a
        table (diagnosis: each layer's per-channel values) reads its steps and flags once."""
        if self._settled_now() if settled_now is None else settled_now:
            ids = []  # opened when the table's rows are not kept yet: then its steps and flags are not either

            def held_rows():
                ids.extend(self._head_ids(table, True))
                return min(d.shape[0] for d in ids)
            n = min(held, self._kept(("rows", table), held_rows, True))
            rows = range(*strided(n, max_points).indices(n))
            return (rows, *self._steps_and_mask(table, rows, *ids, settled_now=True))
        step, mask = self._head_ids(table, False)
        n = min(held, step.shape[0], mask.shape[0])
        rows = range(*strided(n, max_points).indices(n))
        return (rows, *self._steps_and_mask(table, rows, step, mask))

    def _head_ids(self, table: str, settled_now: bool | None = None) -> tuple:
        return self._dataset_id(table, schema.STEP, settled_now), self._dataset_id(table, schema.MEASURED, settled_now)

    def _steps_and_mask(self, table: str, rows: range, *ids, settled_now: bool = False) -> tuple:
        """(steps (read-only), measured [rows, layers]) of those rows of a table (`ids`: its step and measured
        datasets, opened here when not given), kept of a closed shard up to KEEP_ROWS rows (the flags as bits)."""
        key = ("head", table, rows.start, rows.stop, rows.step)
        keep = len(rows) <= KEEP_ROWS and (settled_now or self._settled_now())
        kept = settled.known(self._key, key) if keep else None
        if kept is not None:
            steps, bits, shape = kept
            return steps, np.unpackbits(bits, count=shape[0] * shape[1]).view(bool).reshape(shape)
        step, mask = ids or self._head_ids(table)
        steps = self._checked_steps(table, self._rows(step, table, schema.STEP, rows))
        steps.flags.writeable = False
        flags = self._rows(mask, table, schema.MEASURED, rows).astype(bool)
        if keep:
            # packed whole: along each row of 20 flags it took 14 times as long
            settled.keep(self._key, key, (steps, np.packbits(flags.ravel()), flags.shape))
        return steps, flags

    @serialized
    def masked(self, table: str, column: str, max_points: int | None = None):
        """(steps, values, measured [rows, layers]) of a whole column: every layer, every row the table has."""
        dset = self._dataset_id(table, column)
        rows, steps, measured = self._head_of(table, dset.shape[0], max_points)
        return steps, self._rows(dset, table, column, rows), measured

    @serialized
    def head(self, table: str, step: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, measured [rows, layers]) of the table's rows at or before `step` (None: every row): the step
        column and the measured flags, one read each, never a value column."""
        _, steps, measured = self._head_of(table, np.iinfo(np.int64).max, None)  # kept: a table's next column
        end = len(steps) if step is None else int(np.searchsorted(steps, step, side="right"))
        return steps[:end], measured[:end]

    @serialized
    def last_of_rows(self, table: str, column: str, rows: np.ndarray) -> tuple[int, np.ndarray] | None:
        """(row, value) of the last of `rows` (ascending indices) that the column holds (a live writer grows its
        columns one by one), one hyperslab read: only the chunk that holds it; None when it holds none of them."""
        if not len(rows):
            return None
        did = self._dataset_id(table, column)
        held = rows[rows < did.shape[0]]
        if not len(held):
            return None
        i = int(held[-1])
        return i, self._rows(did, table, column, range(i, i + 1))[0]

    @serialized
    def latest(self, table: str, step: int | None, columns: list[str]) -> tuple[int, list[np.ndarray]] | None:
        """(step, [row of each column]) of the table's latest row at or before `step` (None: the last) that every
        one of `columns` holds, each dataset opened once and one row of it read; None when there is none."""
        step_id = self._dataset_id(table, schema.STEP)
        dids = [self._dataset_id(table, c) for c in columns]
        n = min([step_id.shape[0]] + [d.shape[0] for d in dids])
        steps = self._checked_steps(table, self._rows(step_id, table, schema.STEP, range(n)))
        end = n if step is None else int(np.searchsorted(steps, step, side="right"))
        if end == 0:
            return None
        return int(steps[end - 1]), [self._rows(d, table, c, range(end - 1, end))[0] for d, c in zip(dids, columns)]

    @serialized
    def members(self, table: str, group: str) -> set[str]:
        """Names of the objects in a group of the table (a channel column's layers); empty when it has none."""
        return set(self._kept(("members", table, group), lambda: self._members(table, group)))

    def _members(self, table: str, group: str) -> tuple[str, ...]:
        try:  # low-level: an h5py File made here costs a third of a millisecond more at close
            found = h5py.h5g.open(self.fid, f"{self.table_path(table)}/{group}".encode())
        except KeyError:
            return ()
        return tuple(found.get_objname_by_idx(i).decode() for i in range(found.get_num_objs()))

    @serialized
    def scalar_names(self) -> list[str]:
        """The scalars' names in column order (scalars/names)."""
        return list(self._kept(schema.NAMES, self._read_scalar_names))

    def _read_scalar_names(self) -> tuple[str, ...]:
        dset = self.dataset(schema.TABLE_SCALARS, schema.NAMES)
        names = self._get(dset, schema.TABLE_SCALARS, schema.NAMES, (slice(None),))
        try:
            return tuple(bytes(n).decode("utf-8") for n in names)
        except UnicodeDecodeError:
            raise CorruptShardError(f"{self.path}: {schema.TABLE_SCALARS}/{schema.NAMES} holds a name that is not "
                                    f"UTF-8 (damaged?)") from None

    @serialized
    def closed_and_dropped(self) -> tuple[bool, int]:
        """Whether the writer closed the shard cleanly, and how many records it dropped."""
        return self._closed(), int(self._first_value(schema.DROPPED))

    def _first_value(self, name: str):
        return self._rows(self._dataset_id(schema.STATUS, name), schema.STATUS, name, range(0, 1))[0]

    def _closed(self) -> bool:
        return bool(self._first_value(schema.CLOSED) == 1)

    @serialized
    def first_nonfinite_steps(self) -> dict[str, np.ndarray]:
        """status/first_nonfinite: table -> first step with NaN/Inf per layer (per scalar column for scalars), -1
        where never."""
        group = self.file[f"{schema.STATUS}/{schema.FIRST_NONFINITE}"]
        return {table: self.dataset(schema.STATUS, f"{schema.FIRST_NONFINITE}/{table}")[:] for table in group}

    @serialized
    def snapshot_layers(self, kind: str) -> list[str]:
        """Layers with a snapshot of that kind (schema.FILTERS or schema.FEATURE_MAPS)."""
        return list(self.file[schema.TABLE_SNAPSHOTS][kind])

    @serialized
    def probe_inputs(self) -> np.ndarray | None:
        """The probe batch whose feature maps the snapshots hold (None when none was recorded); checked against
        the feature maps' example count."""
        probe = self.file[schema.PROBE_BATCH]
        maps = self.file[f"{schema.TABLE_SNAPSHOTS}/{schema.FEATURE_MAPS}"]
        where = f"{schema.PROBE_BATCH}/{schema.INPUTS}"
        if schema.INPUTS in probe:
            inputs = probe[schema.INPUTS][:]
            examples = {int(maps[k].shape[1]) for k in maps}
            if examples and examples != {len(inputs)}:
                raise CorruptShardError(f"{self.path}: {where} holds {len(inputs)} examples, its feature maps "
                                        f"{sorted(examples)} (damaged or edited shard)")
            return inputs
        if len(maps):
            raise CorruptShardError(f"{self.path}: feature maps without the probe batch they came from "
                                    f"({where} missing: damaged or edited shard)")
        return None

    @serialized
    def close(self):
        if self._file is not None:
            self._file.close()  # h5py closes what it opened in the file too
            self._file = None
        elif self.fid.valid:  # every dataset read through the id is closed already; FileID.close would also
            self.fid._close()  # look at every object h5py holds (6x the cost of closing the file)
