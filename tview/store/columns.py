"""What a shard writer appends to: extendable chunked columns, tables of them, and the checks for a full disk."""

from __future__ import annotations

import os

import h5py
import numpy as np

from tview.errors import RunExistsError
from tview.store import schema
from tview.store.records import ShardLayout, StepRecord, TableRow

_ROWS_PER_CHUNK = 256  # along the step axis, at most
CHUNK_BYTES = {"every": 16 * 1024, "detail": 4 * 1024}  # small chunks: a short run wastes little space
_FILL = {"f": np.nan, "u": 0, "i": -1}
ROW_CHUNK_BYTES = 1 << 20  # a snapshot row's chunks, at most (a row's first-axis slice, at least)
_SPARE_BYTES = 256 * 1024  # kept free on the disk beyond what a write needs: HDF5 must never meet a full disk


def payload_bytes(records: list[StepRecord]) -> int:
    """About how many bytes a batch of records adds to a shard (its arrays; metadata comes on top)."""
    total = 0
    for r in records:
        total += 1024 + sum(map(_nbytes, (r.filters or {}).values()))
        total += sum(map(_nbytes, (r.feature_maps or {}).values()))
        for row in r.tables.values():
            for v in row.values.values():
                total += sum(map(_nbytes, v.values())) if isinstance(v, dict) else _nbytes(v)
    return total


def _nbytes(v) -> int:
    return v.nbytes if isinstance(v, np.ndarray) else np.asarray(v).nbytes


def free_bytes(path: str) -> int:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(folder)
    except FileNotFoundError:
        raise OSError(2, f"{folder} was removed while recording (run folder deleted?)") from None
    return st.f_bavail * st.f_frsize


def check_room(path: str, needed: int) -> None:
    """Refuse a write the disk may not hold, before HDF5 starts it. HDF5 meeting a full disk leaves
    dirty chunks it can neither write nor drop, and crashed the process when they were closed; a
    write refused here leaves the shard consistent up to its last flush."""
    free = free_bytes(path)
    if free < needed + _SPARE_BYTES:
        raise OSError(28, f"disk nearly full: {free} bytes free where {path} needs about "
                          f"{needed + _SPARE_BYTES} for its next write; recording stops here, the shard is "
                          f"complete up to its last flush")


def chunk_rows(row_bytes: int, target: int = CHUNK_BYTES["every"]) -> int:
    """Rows per chunk: about `target` bytes a chunk, between 1 and _ROWS_PER_CHUNK rows."""
    return int(max(1, min(_ROWS_PER_CHUNK, target // max(row_bytes, 1))))


def row_chunk(row_shape: tuple, itemsize: int, limit: int = ROW_CHUNK_BYTES) -> tuple:
    """A row's chunk: the whole row, or parts of it along its first axis of at most `limit` bytes (at least one
    slice). HDF5 copies a chunk twice while it writes it through the checksum filter: a 9 MiB conv layer's
    filters as one chunk made 18 MiB of temporaries on the writer thread."""
    if not row_shape:
        return ()
    per_slice = int(np.prod(row_shape[1:], dtype=np.int64)) * itemsize
    return (int(max(1, min(row_shape[0], limit // max(per_slice, 1)))),) + tuple(row_shape[1:])


def create_column(group: h5py.Group, name: str, row_shape: tuple, dtype, row_chunks: bool = False,
                  target: int = CHUNK_BYTES["every"]) -> h5py.Dataset:
    """An extendable column with a Fletcher-32 checksum per chunk (a damaged chunk fails to read
    instead of returning wrong numbers); `row_chunks`: one row per chunk, a big row in parts (snapshots).

    Nothing is compressed: gzip cost ~16 ms per MB on the training machine (it ran in the flush,
    holding the GIL) and saved 1% on conv filters, 13-34% on feature maps.
    """
    dtype = np.dtype(dtype)
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    return group.create_dataset(
        name, shape=(0,) + tuple(row_shape), maxshape=(None,) + tuple(row_shape),
        chunks=((1,) + row_chunk(tuple(row_shape), dtype.itemsize) if row_chunks
                else (chunk_rows(row_bytes, target),) + tuple(row_shape)),
        dtype=dtype, fillvalue=_FILL.get(dtype.kind, 0), fletcher32=True)


def checked_array(group: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    """A fixed-size dataset with a checksum (one chunk, Fletcher-32); an empty one stays contiguous."""
    if not data.size:
        return group.create_dataset(name, data=data)
    return group.create_dataset(name, data=data, chunks=data.shape, fletcher32=True)


def refuse_existing_shard(path: str, hint: str) -> None:
    """Raise RunExistsError if `path` (a rank's shard) exists; `hint` says how to go on."""
    if os.path.lexists(path):
        raise RunExistsError(f"{path} already holds a recorded run; {hint}")


class ColumnWriter:
    """One dataset of a table, with what appending needs kept at hand (h5py's properties are slow)."""

    def __init__(self, dset: h5py.Dataset):
        self.dset = dset
        self.row_shape = tuple(dset.shape[1:])
        self.dtype = dset.dtype
        self.fill = dset.fillvalue
        self._memory_spaces: dict[int, h5py.h5s.SpaceID] = {}  # per row count written at once: made once

    def write(self, n0: int, block: np.ndarray):
        """Grow to n0 + len(block) rows and write block there (HDF5's low-level calls: no h5py checks)."""
        k = block.shape[0]
        self.dset.id.set_extent((n0 + k,) + self.row_shape)
        space = self.dset.id.get_space()
        space.select_hyperslab((n0,) + (0,) * len(self.row_shape), (k,) + self.row_shape)
        block = np.ascontiguousarray(block, dtype=self.dtype)
        memory = self._memory_spaces.get(k)
        if memory is None:
            memory = h5py.h5s.create_simple(block.shape)
            if k <= 64:  # a batch's row counts repeat; a bigger one (a resumed backlog) is not kept
                self._memory_spaces[k] = memory
        self.dset.id.write(memory, space, block)

    def block(self, values: list) -> np.ndarray:
        """Rows stacked; a missing row (None) or one of another shape holds the fill value. One row of the
        column's dtype and shape, contiguous, is written from its own memory (a snapshot: no copy of it)."""
        if len(values) == 1 and isinstance(values[0], np.ndarray) and values[0].shape == self.row_shape \
                and values[0].dtype == self.dtype and values[0].flags.c_contiguous:
            return values[0][None]
        shape = self.row_shape
        out = np.empty((len(values),) + shape, dtype=self.dtype)
        for i, v in enumerate(values):  # (an array's own shape: np.shape is a Python call per value)
            out[i] = v if v is not None and (v.shape if isinstance(v, np.ndarray) else np.shape(v)) == shape \
                else self.fill
        return out


class TableWriter:
    """A group whose datasets all grow together along axis 0; 'step' is resized last, so a reader
    that takes len(step) rows never sees a row that is not complete."""

    def __init__(self, group: h5py.Group):
        self.group = group
        self.columns: dict[str, ColumnWriter] = {}
        self._collect(group, "")
        self._step = ColumnWriter(group["step"])
        self._n = int(group["step"].shape[0])

    def _collect(self, group: h5py.Group, prefix: str):
        for key, item in group.items():
            if isinstance(item, h5py.Group):
                self._collect(item, prefix + key + "/")
            elif prefix or key not in ("step", "names"):  # scalars/names grows on its own
                self.columns[prefix + key] = ColumnWriter(item)

    def __len__(self) -> int:
        return self._n

    def append(self, steps: list[int], rows: list[dict[str, np.ndarray]]):
        """Append len(steps) rows; a column missing from a row keeps its fill value."""
        n0 = self._n
        for name, col in self.columns.items():
            col.write(n0, col.block([row.get(name) for row in rows]))  # one write per column and batch
        self._step.write(n0, np.asarray(steps, dtype=np.int64))
        self._n = n0 + len(steps)


def create_probe_table(parent: h5py.Group, spec: schema.TableSpec, lay: ShardLayout):
    g = parent.create_group(spec.name)
    g.attrs["spec"] = spec.to_json()
    target = CHUNK_BYTES[spec.cadence]
    L = len(lay.layers)
    create_column(g, "step", (), np.int64, target=target)
    create_column(g, "measured", (L,), np.uint8, target=target)
    if spec.sampled:
        create_column(g, "sample_n", (L,), np.float64, target=target)
        create_column(g, "total_n", (L,), np.float64, target=target)
    for col in spec.columns:
        if col.kind == schema.CHANNEL:
            sub = g.create_group(col.name)
            for layer, width in lay.channel_widths.get(col.name, {}).items():
                create_column(sub, layer, (int(width),), col.dtype, target=CHUNK_BYTES["detail"])
        else:
            shape = {schema.LAYER: (L,), schema.HIST: (L, schema.HIST_BINS), schema.VECTOR: (L, col.width)}
            create_column(g, col.name, shape[col.kind], col.dtype, target=target)


def table_rows(spec: schema.TableSpec, rows: list[TableRow], layer_names: list[str]) -> list[dict]:
    """TableRows as {dataset path: row} for TableWriter.append."""
    out = []
    for r in rows:
        row = {"measured": np.asarray(r.measured, dtype=np.uint8)}
        if spec.sampled:
            row["sample_n"], row["total_n"] = r.sample_n, r.total_n
        for col in spec.columns:
            value = r.values.get(col.name)
            if col.kind == schema.CHANNEL:
                row.update({f"{col.name}/{layer}": v for layer, v in (value or {}).items()})
            elif value is not None:
                row[col.name] = value
        out.append(row)
    return out


def unknown_columns(spec: schema.TableSpec, row: TableRow) -> list[str]:
    return sorted(set(row.values) - set(spec.names))
