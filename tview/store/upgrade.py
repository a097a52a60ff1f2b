"""`tview upgrade RUN`: convert a schema 1 run to schema 2, shard by shard, keeping each old shard.

Schema 1 filled a statistic's unmeasured cells with NaN, so a NaN there cannot tell "not measured"
from "the model made NaN": the conversion takes a cell as measured when it holds a number, or
when its row and layer hold a number in another column of the same table (a NaN beside measured
numbers is the model's). Schema 1's statistic names are frozen history, listed here once.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from tview.errors import CorruptShardError, NotARunError
from tview.store.manifest import read_manifest, write_manifest
from tview.store.records import ShardLayout, StepRecord, TableRow
from tview.store.schema import CHANNEL, HIST, VECTOR, Column, TableSpec

_N = {"nonfinite": True}
V1_TABLES = (  # table, reads, cadence, sampled, columns (name, kind, extra) as schema 1 named them
    ("grad", "gradient", "every", False, [("grad_norm",), ("grad_mean",), ("grad_std",), ("grad_max_abs",),
                                          ("grad_nan", "layer", _N), ("grad_inf", "layer", _N)]),
    ("local_grad", "local_gradient", "every", False, [("local_grad_norm",)]),
    ("weight", "weight", "every", False, [("weight_norm",)]),
    ("update", "weight", "every", False, [("update_ratio",)]),
    ("act", "activation", "detail", True, [("act_mean",), ("act_std",), ("act_min",), ("act_max",)]),
    ("act_counts", "activation", "detail", True, [("act_zero_frac",), ("act_nan", "layer", _N),
                                                  ("act_inf", "layer", _N)]),
    ("act_channel", "activation", "detail", False, [("act_channel_mean", CHANNEL), ("act_channel_zero_frac", CHANNEL)]),
    ("trajectory", "weight", "detail", False, [("trajectory", VECTOR)]),
    ("grad_hist", "gradient", "detail", False, [("grad", HIST)]),
    ("weight_hist", "weight", "detail", False, [("weight", HIST)]),
    ("act_hist", "activation", "detail", True, [("act", HIST)]),
)


def _spec(name, reads, cadence, sampled, cols, f) -> TableSpec:
    width = int(f.attrs.get("trajectory_dims", 3))
    columns = []
    for c in cols:
        kind = c[1] if len(c) > 1 else "layer"
        columns.append(Column(c[0], kind, "uint32" if kind == HIST else "float32",
                              width=width if kind == VECTOR else 0, **(c[2] if len(c) > 2 else {})))
    columns = tuple(columns)
    return TableSpec(name, columns, reads, cadence, sampled, "converted from store schema 1")


def _v1_columns(f: h5py.File, spec: TableSpec) -> dict:
    """{column: (steps, values)} of one table's columns as schema 1 stored them."""
    group = f["hist"] if any(c.kind == HIST for c in spec.columns) else f["stats"]
    n = len(group["step"])
    steps = group["step"][:n]
    out = {}
    for col in spec.columns:
        if col.name not in group:
            continue
        item = group[col.name]
        out[col.name] = {k: item[k][:n] for k in item} if col.kind == CHANNEL else item[:n]
    return steps, out


def _measured(col: Column, values, layers: list[str]) -> np.ndarray:
    """[n, L]: where schema 1 holds a number (histograms: any count) for that column."""
    if col.kind == CHANNEL:
        n = len(next(iter(values.values()))) if values else 0
        out = np.zeros((n, len(layers)), dtype=bool)
        for layer, v in values.items():
            out[:, layers.index(layer)] = ~np.isnan(v).all(axis=1)
        return out
    if col.kind == HIST:
        return values.sum(axis=2) > 0
    return ~np.isnan(values).all(axis=2) if col.kind == VECTOR else ~np.isnan(values)


def _table_rows(spec: TableSpec, steps: np.ndarray, values: dict, layers: list[str]) -> dict[int, TableRow]:
    """{step: TableRow} of the rows where some layer was measured."""
    if not values:
        return {}
    measured = np.any([_measured(c, values[c.name], layers) for c in spec.columns if c.name in values], axis=0)
    rows = {}
    for i in np.flatnonzero(measured.any(axis=1)):
        row = TableRow(measured[i].copy())
        for col in spec.columns:
            if col.name in values:
                v = values[col.name]
                row.values[col.name] = {k: a[i] for k, a in v.items()} if col.kind == CHANNEL else v[i]
        if spec.sampled:
            row.sample_n, row.total_n = np.full(len(layers), np.nan), np.full(len(layers), np.nan)
        rows[int(steps[i])] = row
    return rows


def _scalar_rows(f: h5py.File) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    sc = f["scalars"]
    n = len(sc["step"])
    names = [bytes(x).decode("utf-8", "replace") for x in sc["names"][:]]
    values = sc["values"][:n]
    first = f["status"]["first_nonfinite_scalar"][:] if "first_nonfinite_scalar" in f["status"] else None
    steps = sc["step"][:n]
    out = []
    for i in range(n):
        row = {}
        for j, name in enumerate(names):
            nan_seen = first is not None and 0 <= first[j] <= steps[i]
            if not np.isnan(values[i, j]) or nan_seen:
                row[name] = float(values[i, j])
        out.append(row)
    return steps, sc["wall_time"][:n], out


def _snapshots(f: h5py.File) -> dict[int, dict]:
    sn = f["snapshots"]
    n = len(sn["step"])
    out = {}
    for i, step in enumerate(sn["step"][:n]):
        out[int(step)] = {g: {k: sn[g][k][i] for k in sn[g]} for g in ("filters", "feature_maps")}
    return out


def _layout(f: h5py.File, specs: list[TableSpec], layers: list[dict]) -> ShardLayout:
    widths = {}
    for spec in specs:
        for col in spec.columns:
            if col.kind == CHANNEL and col.name in f["stats"]:
                widths[col.name] = {k: int(f["stats"][col.name][k].shape[1]) for k in f["stats"][col.name]}
    sn, probe = f["snapshots"], f["probe"]
    return ShardLayout(rank=int(f.attrs["rank"]), world_size=int(f.attrs["world_size"]), run_id=str(f.attrs["run_id"]),
                       layers=layers, tables=specs, channel_widths=widths,
                       filter_shapes={k: sn["filters"][k].shape[1:] for k in sn["filters"]},
                       feature_map_shapes={k: sn["feature_maps"][k].shape[1:] for k in sn["feature_maps"]},
                       probe_inputs=probe["inputs"][:] if "inputs" in probe else None,
                       probe_targets=probe["targets"][:] if "targets" in probe else None)


def upgrade_shard(old: str, new: str) -> int:
    """Write `old` (schema 1) as `new` (schema 2); returns the recorded steps converted."""
    from tview.store.shard import ShardWriter
    with h5py.File(old, "r") as f:
        if int(f.attrs.get("tview_schema_version", -1)) != 1:
            raise CorruptShardError(f"{old}: not a store schema 1 shard; nothing to upgrade")
        layers = json.loads(f.attrs["layers_json"])
        names = [layer["name"] for layer in layers]
        specs, tables = [], {}
        for entry in V1_TABLES:
            spec = _spec(*entry, f)
            rows = _table_rows(spec, *_v1_columns(f, spec), names)
            if rows:
                specs.append(spec)
                tables[spec.name] = rows
        steps, walls, scalars = _scalar_rows(f)
        snaps = _snapshots(f)
        writer = ShardWriter(new, _layout(f, specs, layers))
        records = [StepRecord(int(s), float(w), sc, {t: rows[int(s)] for t, rows in tables.items() if int(s) in rows},
                              **{k: v or None for k, v in snaps.get(int(s), {}).items()})
                   for s, w, sc in zip(steps, walls, scalars)]
        for i in range(0, len(records), 256):
            writer.write(records[i:i + 256])
        writer.set_dropped(int(f["status"]["dropped"][0]))
        writer.close(clean=bool(f["status"]["closed"][0] == 1))
    return len(records)


def upgrade_run(path: str, report=print) -> int:
    """Convert every schema 1 shard of a run; each old shard is kept as rank-NNNNN.v1.h5. Returns the
    number of shards converted (0: the run was already schema 2)."""
    manifest = read_manifest(path)
    if not os.path.isdir(path):
        raise NotARunError(f"{path}: not a run folder")
    done = 0
    for name in sorted(os.listdir(path)):
        if not (name.startswith("rank-") and name.endswith(".h5")) or name.endswith(".v1.h5"):
            continue
        shard = os.path.join(path, name)
        with h5py.File(shard, "r") as f:
            if int(f.attrs.get("tview_schema_version", -1)) != 1:
                continue
        kept = shard[:-3] + ".v1.h5"
        os.replace(shard, kept)
        try:
            steps = upgrade_shard(kept, shard)
        except BaseException:
            if os.path.exists(shard):
                os.remove(shard)
            os.replace(kept, shard)  # nothing lost: the old shard goes back
            raise
        report(f"{shard}: {steps} recorded steps converted (schema 1 kept as {kept})")
        done += 1
    if done or manifest.get("tview_schema_version") == 1:
        write_manifest(path, {k: v for k, v in manifest.items() if k != "tview_schema_version"})
    return done
