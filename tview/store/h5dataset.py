"""A dataset opened low-level, its shape and dtype asked of HDF5 once, and rows of it read by hyperslab.

A first read across 1024 shards opens three datasets in each: h5py's `DatasetID.shape` and `.dtype` ask HDF5
again on every use (a dataspace or a datatype made, converted and closed each time), and a read without a memory
type makes one; those were an eighth of that read's time.
"""

from __future__ import annotations

import functools

import h5py
import numpy as np

WHOLE_BYTES = 2**20  # a column up to this size is read whole for one layer of it (its chunks hold every layer)


@functools.lru_cache(maxsize=16)
def memory_type(dtype: np.dtype) -> h5py.h5t.TypeID:
    """The HDF5 memory type of a numpy dtype as h5py makes it for each read, made once (a Python object's, text
    included, is h5py's opaque object type whatever the dtype's metadata: numpy's == ignores metadata too)."""
    return h5py.h5t.py_create(dtype)


def hyperslab(shape: tuple, rows: range, layer: int | None) -> tuple[tuple, tuple, tuple]:
    """(start, count, stride) selecting `rows` (a stepped range) of a dataset of that shape, all of each row or its
    entry `layer` along axis 1."""
    count = (len(rows),) + shape[1:]
    start = (rows.start,) + (0,) * (len(shape) - 1)
    if layer is not None:
        count, start = count[:1] + (1,) + count[2:], start[:1] + (layer,) + start[2:]
    return start, count, (rows.step,) + (1,) * (len(shape) - 1)


class OpenDataset:
    """A dataset id with its shape (as of opening or refreshing it) and the dtype its rows are read as: the
    declared one where the caller knows it (HDF5 converts another numeric type, and fails on one it cannot), else
    the stored one."""

    __slots__ = ("did", "shape", "dtype")

    def __init__(self, did: h5py.h5d.DatasetID, dtype: np.dtype | None = None):
        self.did = did
        self.shape = did.shape
        self.dtype = did.dtype if dtype is None else dtype

    def rows(self, rows: range, layer: int | None = None) -> np.ndarray:
        """Rows (a stepped range), all of each row or its entry `layer` along axis 1: only the chunks that hold
        those rows are read. Raises what h5py raises (OSError, ValueError, RuntimeError) on a damaged object."""
        shape = self.shape
        whole = rows.start == 0 and rows.step == 1 and len(rows) == shape[0] > 0
        if whole and layer is not None and int(np.prod(shape)) * self.dtype.itemsize <= WHOLE_BYTES:
            return self.rows(rows)[:, layer]  # one layer of a small column read whole: HDF5's selection costs more
        start, count, stride = hyperslab(shape, rows, layer)
        out = np.empty(count, self.dtype)
        if whole and layer is None:  # all of it
            self.did.read(h5py.h5s.ALL, h5py.h5s.ALL, out, memory_type(out.dtype))
        elif len(rows):
            space = self.did.get_space()
            space.select_hyperslab(start, count, stride)
            self.did.read(h5py.h5s.create_simple(count), space, out, memory_type(out.dtype))
        return out if layer is None else out.reshape(count[:1] + count[2:])
