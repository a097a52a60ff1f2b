"""A shard's header: its root attributes read low-level and checked, kept for reopening an unchanged file."""

from __future__ import annotations

import functools
import json
import os
from collections import OrderedDict
from dataclasses import dataclass

import h5py
import numpy as np

from tview.errors import CorruptShardError, SchemaVersionError
from tview.store import schema


@dataclass(frozen=True)
class Header:
    """What a shard's root attributes say (fixed for a file's life: written before its writer switched to SWMR)."""

    version: int
    rank: int
    layer_info: list
    tables: dict
    world_size: int


_HEADERS: OrderedDict[tuple, Header] = OrderedDict()  # a file's identity() -> its header, most recent last
HEADERS_KEPT = 4096  # headers of shards opened before, for reopening them without their attributes read again


def identity(path: str) -> tuple:
    """What says a file is unchanged since: path, inode, size, modification and change times."""
    st = os.stat(path)
    return path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns  # ctime: a content change with mtime set back


def known_header(key: tuple) -> Header | None:
    """The header of a file opened before with this identity (None: never, or changed since)."""
    return _HEADERS.get(key)


def remember_header(key: tuple, header: Header) -> None:
    _HEADERS[key] = header
    _HEADERS.move_to_end(key)
    while len(_HEADERS) > HEADERS_KEPT:
        _HEADERS.popitem(last=False)


def _v1_message(path: str) -> str:
    return (f"{path}: written with store schema 1; this tview reads schema {schema.SCHEMA_VERSION}. "
            f"Convert the run with `tview upgrade RUN` (it keeps a copy of each old shard)")


def _text(value) -> str:
    return value if isinstance(value, str) else bytes(value).decode()


@functools.lru_cache(maxsize=64)
def _parsed(text: str):
    """JSON parsed once for every shard that holds the same text (all ranks of a run do)."""
    return json.loads(text)


def _layers_of(path: str, text) -> list[dict]:
    layers = _parsed(_text(text))
    if not isinstance(layers, list) or not all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in layers):
        raise CorruptShardError(f"{path}: {schema.LAYERS_ATTR} is not a list of layers with names")
    return layers


@functools.lru_cache(maxsize=64)
def _table_specs(text: str) -> dict[str, schema.TableSpec]:
    return {d["name"]: schema.TableSpec.from_json(json.dumps(d)) for d in json.loads(text)}


def _tables_of(shard, text) -> dict[str, schema.TableSpec]:
    """The probe tables' declarations: from the root attribute tables_json (one read), else each table's spec."""
    if text is None:
        return {name: schema.TableSpec.from_json(g.attrs[schema.SPEC_ATTR])
                for name, g in shard.file[schema.PROBES].items()}
    specs = _table_specs(_text(text))
    held = h5py.h5g.open(shard.fid, schema.PROBES.encode()).get_num_objs()  # a missing one fails when read
    if held != len(specs):
        raise CorruptShardError(f"{shard.path}: {schema.TABLES_ATTR} declares {sorted(specs)}, the file holds "
                                f"{sorted(shard.file[schema.PROBES])}")
    return specs


def expected_shapes(shard) -> dict[str, tuple]:
    """Row shape of each dataset whose shape the declarations fix, by path in the file."""
    L = len(shard.layers)
    need = {f"{schema.TABLE_SCALARS}/{schema.VALUES}": (schema.MAX_SCALARS,),
            f"{schema.TABLE_SCALARS}/{schema.MEASURED}": (schema.MAX_SCALARS,)}
    for name, spec in shard.tables.items():
        base = schema.table_path(name)
        need.update({f"{base}/{schema.STEP}": (), f"{base}/{schema.MEASURED}": (L,)})
        if spec.sampled:
            need.update({f"{base}/{schema.SAMPLE_N}": (L,), f"{base}/{schema.TOTAL_N}": (L,)})
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
        return self.read(name)

    def read(self, name: str, dtype=None):
        """The attribute's value, read as `dtype` (None: its own; a known one saves asking HDF5 for the type, a
        third of the cost; a stored value that does not convert fails). Its shape is always the stored one: h5py
        writes a whole attribute into the array given, whatever that array's size."""
        try:
            attr = h5py.h5a.open(self.fid, name.encode())
        except KeyError:
            raise KeyError(f"no attribute {name!r}") from None
        out = np.empty(attr.shape, attr.dtype if dtype is None else dtype)
        try:
            attr.read(out)
        except OSError:  # no conversion to dtype (text stored as fixed-length bytes): read as stored
            if dtype is None:
                raise
            out = np.empty(attr.shape, attr.dtype)
            attr.read(out)
        return out[()]

    def get(self, name: str, default=None, dtype=None):
        try:
            return self.read(name, dtype)
        except KeyError:
            return default


_TEXT = h5py.string_dtype()


def read_header(shard) -> Header:
    """A shard's root attributes, checked (`shard`: its path, fid and, made on use, h5py file)."""
    attrs = _Attributes(shard.fid)
    try:
        version = int(attrs.read(schema.VERSION_ATTR, np.int64))
    except KeyError:
        raise CorruptShardError(f"{shard.path}: HDF5 file without {schema.VERSION_ATTR}; "
                                f"not a tview shard") from None
    if version > schema.SCHEMA_VERSION:
        raise SchemaVersionError(f"{shard.path}: store schema version {version} is newer than this "
                                 f"tview reads ({schema.SCHEMA_VERSION}); upgrade tview")
    if version < schema.SCHEMA_VERSION:
        raise SchemaVersionError(_v1_message(shard.path))
    return Header(version, int(attrs.read(schema.RANK_ATTR, np.int64)),
                  _layers_of(shard.path, attrs.read(schema.LAYERS_ATTR, _TEXT)),
                  _tables_of(shard, attrs.get(schema.TABLES_ATTR, dtype=_TEXT)),
                  int(attrs.read(schema.WORLD_SIZE_ATTR, np.int64)))

