"""Synthetic runs of any length for benchmarks and tests: real shards in the real format, written in bulk.

Every step has scalars (loss, lr, step_time, examples, examples_per_sec, host_rss_bytes), gradient,
local gradient, weight and activation statistics and the trajectory, as a recorder with every=1
would leave them (made-up tables of the same shape as the probes': this module cannot import the
probes, which need torch). Histograms are written every `detail_every` steps; per-channel
statistics only on the last `channel_tail` steps (enough for the dashboard's dead-filter check) to
keep 1e6-step runs to about 2 GiB per rank. No snapshots.
"""

from __future__ import annotations

import os
import time

import numpy as np

from tview.store import schema
from tview.store.manifest import write_manifest
from tview.store.records import ShardLayout
from tview.store.schema import CHANNEL, HIST, VECTOR, Column, TableSpec
from tview.store.shard import ShardWriter

SCALARS = ("loss", "lr", "step_time", "examples", "examples_per_sec", "host_rss_bytes")
TABLES = (
    TableSpec("grad", (Column("grad_norm"), Column("grad_max_abs"), Column("grad_nan", nonfinite=True)), "gradient"),
    TableSpec("local_grad", (Column("local_grad_norm"),), "local_gradient"),
    TableSpec("weight", (Column("weight_norm"), Column("weight_sum", dtype="float64", nonfinite_value=True)), "weight"),
    TableSpec("act", (Column("act_mean"), Column("act_std")), "activation"),
    TableSpec("act_counts", (Column("act_zero_frac"), Column("act_nan", nonfinite=True)), "activation"),
    TableSpec("act_channel", (Column("act_channel_mean", CHANNEL), Column("act_channel_zero_frac", CHANNEL)),
              "activation", "detail"),
    TableSpec("grad_hist", (Column("grad", HIST, "uint32"),), "gradient", "detail"),
    TableSpec("trajectory", (Column("trajectory", VECTOR, width=3),), "weight"),
)


def synthetic_layers(n_layers: int, channels: int = 16) -> list[dict]:
    return [{"name": f"block{i // 2}.{'conv' if i % 2 == 0 else 'relu'}", "type": "Conv2d" if i % 2 == 0 else "ReLU",
             "kind": "param" if i % 2 == 0 else "activation", "channels": channels,
             "params": channels * channels * 9 if i % 2 == 0 else 0} for i in range(n_layers)]


def _fill(dset, n: int, block: int, make):
    dset.resize(n, axis=0)
    for i in range(0, n, block):
        j = min(n, i + block)
        dset[i:j] = make(i, j)


def _scalars(steps: int, rank: int, noise: np.ndarray):
    def make(i, j):
        k = np.arange(i, j)
        out = np.full((j - i, schema.MAX_SCALARS), np.nan)
        out[:, 0] = 2.3 * np.exp(-k / max(steps / 5, 1)) + 0.05 * noise[: j - i, 0]
        out[:, 1] = 0.1
        out[:, 2] = 0.05 * (1 + 0.1 * rank) + 0.001 * noise[: j - i, 1]
        out[:, 3] = 64
        out[:, 4] = 64 / out[:, 2]
        out[:, 5] = 1e9
        return out
    return make


def _write_table(g, spec: TableSpec, steps: np.ndarray, layers: int, block: int, noise: np.ndarray, rng):
    """One table: every row measured for every layer (CHANNEL: the synthetic layers all have channels)."""
    n = len(steps)
    for k, col in enumerate(spec.columns):
        if col.kind == CHANNEL:
            for name in g[col.name]:
                _fill(g[col.name][name], n, block,
                      lambda i, j, d=g[col.name][name]: rng.uniform(0, 0.5, (j - i, d.shape[1])).astype(np.float32))
        elif col.kind == HIST:
            counts = rng.integers(0, 1000, size=(min(n, 1000), layers, schema.HIST_BINS), dtype=np.uint32)
            _fill(g[col.name], n, 1000, lambda i, j, c=counts: c[: j - i])
        elif col.kind == VECTOR:
            _fill(g[col.name], n, block,
                  lambda i, j, w=col.width: np.cumsum(noise[: j - i, :, None].repeat(w, 2), 0) + i * 1e-4)
        else:
            _fill(g[col.name], n, block, lambda i, j, k=k, zero=col.nonfinite: np.zeros((j - i, layers)) if zero
                  else np.abs(1.0 + k + noise[: j - i]))
    _fill(g["measured"], n, block, lambda i, j: np.ones((j - i, layers), np.uint8))
    _fill(g["step"], n, block, lambda i, j: steps[i:j])


def write_synthetic_run(path: str, steps: int, ranks: int = 8, layers: int = 20, channels: int = 16,
                        detail_every: int = 100, channel_tail: int = 10_000, seed: int = 0,
                        block: int = 100_000) -> str:
    """Write a closed run of `steps` recorded steps on `ranks` ranks into the folder `path`."""
    os.makedirs(path, exist_ok=True)
    info = synthetic_layers(layers, channels)
    write_manifest(path, {"model": "Synthetic", "world_size": ranks, "layers": info, "preset": "default",
                          "schedule": "every(1)", "snapshot_schedule": "never", "filter_layers": [],
                          "probe_layers": [], "run_id": f"synthetic-{seed}"})
    t0 = time.time() - steps * 0.05
    all_steps = np.arange(steps, dtype=np.int64)
    step_sets = {"every": all_steps, "detail": all_steps[::detail_every],
                 "act_channel": all_steps[max(0, steps - channel_tail):]}
    widths = {c.name: {layer["name"]: channels for layer in info}
              for t in TABLES for c in t.columns if c.kind == CHANNEL}
    for rank in range(ranks):
        rng = np.random.default_rng(seed * 1000 + rank)
        layout = ShardLayout(rank=rank, world_size=ranks, run_id=f"synthetic-{seed}", layers=info,
                             tables=list(TABLES), channel_widths=widths)
        w = ShardWriter(os.path.join(path, schema.shard_name(rank)), layout)
        f = w.file
        sc = f[schema.TABLE_SCALARS]
        sc["names"].resize(len(SCALARS), axis=0)
        sc["names"][:] = [n.encode() for n in SCALARS]
        noise = rng.normal(size=(min(block, max(steps, 1)), layers)).astype(np.float32) * 0.05
        _fill(sc["values"], steps, block, _scalars(steps, rank, noise))
        _fill(sc["measured"], steps, block, lambda i, j: np.repeat(
            (np.arange(schema.MAX_SCALARS) < len(SCALARS))[None].astype(np.uint8), j - i, 0))
        _fill(sc["wall_time"], steps, block, lambda i, j: t0 + np.arange(i, j) * 0.05)
        _fill(sc["step"], steps, block, lambda i, j: all_steps[i:j])
        for spec in TABLES:
            rows = step_sets.get(spec.name, step_sets[spec.cadence])
            _write_table(f[schema.PROBES][spec.name], spec, rows, layers, block, noise, rng)
        w.rebuild_summary()  # written in bulk, past the writer's own bookkeeping
        w.close(clean=True)
    return path
