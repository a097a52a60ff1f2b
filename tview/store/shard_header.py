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
from tview.store.h5dataset import memory_type


@dataclass(frozen=True)
class Layout:
    """What a shard's layers and table declarations make of it, made once for every shard that holds the same
    texts (all ranks of a run do): the layers, the tables, each column's table, each fixed dataset's row shape."""

    layer_info: list
    tables: dict
    layers: list  # names
    columns: dict  # column name -> (table, schema.Column)
    shapes: dict  # dataset path -> the row shape its declaration fixes
    dtypes: dict  # dataset path -> the dtype its declaration fixes (rows are read as it)


@dataclass(frozen=True)
class Header:
    """What a shard's root attributes say (fixed for a file's life: written before its writer switched to SWMR)."""

    version: int
    rank: int
    layout: Layout
    world_size: int


_HEADERS: OrderedDict[tuple, tuple[Header, bool]] = OrderedDict()  # identity() -> (header, writer closed)
HEADERS_KEPT = 4096  # headers of shards opened before, for reopening them without their attributes read again


def identity(path: str) -> tuple:
    """What says a file is unchanged since: path, inode, size, modification and change times."""
    st = os.stat(path)
    return path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns  # ctime: a content change with mtime set back


def known_header(key: tuple) -> tuple[Header, bool] | None:
    """(header, whether no writer held it open then) of a file opened before with this identity (None: never, or
    changed since)."""
    return _HEADERS.get(key)


def remember_header(key: tuple, header: Header, writer_closed: bool) -> None:
    _HEADERS[key] = header, writer_closed
    _HEADERS.move_to_end(key)
    while len(_HEADERS) > HEADERS_KEPT:
        _HEADERS.popitem(last=False)


def _v1_message(path: str) -> str:
    return (f"{path}: written with store schema 1; this tview reads schema {schema.SCHEMA_VERSION}. "
            f"Convert the run with `tview upgrade RUN` (it keeps a copy of each old shard)")


def _text(value) -> str:
    return value if isinstance(value, str) else bytes(value).decode()


def _named_layers(layers) -> bool:
    return isinstance(layers, list) and all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in layers)


@functools.lru_cache(maxsize=64)
def _parsed_layers(text: str) -> list[dict] | None:
    """The layers a shard's layers_json lists (None: not a list of layers with names), parsed once for every
    shard that holds the same text."""
    layers = json.loads(text)
    return layers if _named_layers(layers) else None


def _layers_of(path: str, text) -> list[dict]:
    layers = _parsed_layers(_text(text))
    if layers is None:
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
    # A declared table the file lacks is named when it is read (ShardReader._dataset_id): not looked for here, where
    # opening the probes group cost 4-5% of a first read across 1024 shards.
    return _table_specs(_text(text))


def expected_shapes(n_layers: int, tables: dict[str, schema.TableSpec]) -> dict[str, tuple]:
    """Row shape of each dataset whose shape the declarations fix, by path in the file."""
    L = n_layers
    need = {f"{schema.TABLE_SCALARS}/{schema.VALUES}": (schema.MAX_SCALARS,),
            f"{schema.TABLE_SCALARS}/{schema.MEASURED}": (schema.MAX_SCALARS,)}
    for name, spec in tables.items():
        base = schema.table_path(name)
        need.update({f"{base}/{schema.STEP}": (), f"{base}/{schema.MEASURED}": (L,)})
        if spec.sampled:
            need.update({f"{base}/{schema.SAMPLE_N}": (L,), f"{base}/{schema.TOTAL_N}": (L,)})
        shapes = {schema.LAYER: (L,), schema.HIST: (L, schema.HIST_BINS)}
        need.update({f"{base}/{c.name}": shapes.get(c.kind, (L, c.width)) for c in spec.columns
                     if c.kind != schema.CHANNEL})
    return need


def declared_dtypes(tables: dict[str, schema.TableSpec]) -> dict[str, np.dtype]:
    """The dtype of each probe table's steps, measured flags and columns with one dataset, by path in the file."""
    need = {}
    for name, spec in tables.items():
        base = schema.table_path(name)
        need.update({f"{base}/{schema.STEP}": np.dtype(np.int64), f"{base}/{schema.MEASURED}": np.dtype(np.uint8)})
        need.update({f"{base}/{c.name}": np.dtype(c.dtype) for c in spec.columns if c.kind != schema.CHANNEL})
    return need


def layout(layer_info: list, tables: dict) -> Layout:
    """What a shard with these layers and tables holds where."""
    return Layout(layer_info, tables, [x["name"] for x in layer_info],
                  {c.name: (t, c) for t, spec in tables.items() for c in spec.columns},
                  expected_shapes(len(layer_info), tables), declared_dtypes(tables))


@functools.lru_cache(maxsize=64)
def _layout_of(layers_text: str, tables_text: str) -> Layout:
    """The layout of every shard with these (checked) texts."""
    return layout(_parsed_layers(layers_text), _table_specs(tables_text))


class _Attributes:
    """A file's root attributes read with HDF5's low-level calls (a third of h5py's cost per attribute);
    strings come back as bytes."""

    def __init__(self, fid: h5py.h5f.FileID):
        self.fid = fid

    def read(self, name: str, dtype: np.dtype):
        """A single-valued attribute's value read as `dtype` (a value of another shape fails: TypeError). Text
        stored as fixed-length bytes does not convert to variable-length text: it is then read as stored."""
        try:
            attr = h5py.h5a.open(self.fid, name.encode())
        except KeyError:
            raise KeyError(f"no attribute {name!r}") from None
        out = np.empty((), dtype)
        try:
            attr.read(out, memory_type(out.dtype))
        except OSError:
            out = np.empty((), attr.dtype)
            attr.read(out)
        return out[()]

    def get(self, name: str, dtype: np.dtype, default=None):
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
    rank = int(attrs.read(schema.RANK_ATTR, np.int64))
    layers_text = attrs.read(schema.LAYERS_ATTR, _TEXT)
    layers, tables_text = _layers_of(shard.path, layers_text), attrs.get(schema.TABLES_ATTR, _TEXT)
    tables = _tables_of(shard, tables_text)
    # made once for all shards with the same texts
    lay = layout(layers, tables) if tables_text is None else _layout_of(_text(layers_text), _text(tables_text))
    return Header(version, rank, lay, int(attrs.read(schema.WORLD_SIZE_ATTR, np.int64)))

