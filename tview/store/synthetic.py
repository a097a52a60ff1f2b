"""Synthetic runs of any length for benchmarks and tests: real shards in the real format, written in bulk.

Every step has scalars (loss, lr, step_time, examples, examples_per_sec, host_rss_bytes) and every
layer statistic and trajectory row, as a recorder with every=1 would leave them. Histograms are
written every `detail_every` steps (the default preset's rhythm); per-channel statistics only on
the last `channel_tail` steps (enough for the dashboard's dead-filter check) to keep 1e6-step runs
to about 2 GiB per rank. No snapshots.
"""

from __future__ import annotations

import os
import time

import numpy as np

from tview.store import schema
from tview.store.manifest import write_manifest
from tview.store.records import ShardLayout
from tview.store.shard import ShardWriter

SCALARS = ("loss", "lr", "step_time", "examples", "examples_per_sec", "host_rss_bytes")


def synthetic_layers(n_layers: int, channels: int = 16) -> list[dict]:
    return [{"name": f"block{i // 2}.{'conv' if i % 2 == 0 else 'relu'}", "type": "Conv2d" if i % 2 == 0 else "ReLU",
             "kind": "param" if i % 2 == 0 else "activation", "channels": channels,
             "params": channels * channels * 9 if i % 2 == 0 else 0} for i in range(n_layers)]


def _fill(dset, n: int, block: int, make):
    dset.resize(n, axis=0)
    for i in range(0, n, block):
        j = min(n, i + block)
        dset[i:j] = make(i, j)


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
    for rank in range(ranks):
        rng = np.random.default_rng(seed * 1000 + rank)
        layout = ShardLayout(rank=rank, world_size=ranks, run_id=f"synthetic-{seed}", layers=info, trajectory_dims=3)
        w = ShardWriter(os.path.join(path, schema.shard_name(rank)), layout)
        f = w.file
        sc = f[schema.TABLE_SCALARS]
        sc["names"].resize(len(SCALARS), axis=0)
        sc["names"][:] = [n.encode() for n in SCALARS]
        noise = rng.normal(size=(block, layers)).astype(np.float32) * 0.05

        def scalars(i, j):
            k = np.arange(i, j)
            out = np.full((j - i, schema.MAX_SCALARS), np.nan)
            out[:, 0] = 2.3 * np.exp(-k / max(steps / 5, 1)) + 0.05 * noise[: j - i, 0]
            out[:, 1] = 0.1
            out[:, 2] = 0.05 * (1 + 0.1 * rank) + 0.001 * noise[: j - i, 1]
            out[:, 3] = 64
            out[:, 4] = 64 / out[:, 2]
            out[:, 5] = 1e9
            return out

        _fill(sc["values"], steps, block, scalars)
        _fill(sc["wall_time"], steps, block, lambda i, j: t0 + np.arange(i, j) * 0.05)
        _fill(sc["step"], steps, block, lambda i, j: np.arange(i, j, dtype=np.int64))
        st = f[schema.TABLE_STATS]
        for s_i, name in enumerate(schema.LAYER_STATS):
            zero = name in schema.NONFINITE_STATS
            _fill(st[name], steps, block, lambda i, j: np.zeros((j - i, layers), np.float32) if zero
                  else np.abs(1.0 + s_i + noise[: j - i]))
        _fill(st["trajectory"], steps, block,
              lambda i, j: np.cumsum(noise[: j - i, :, None].repeat(3, axis=2), axis=0) + i * 1e-4)
        tail0 = max(0, steps - channel_tail)
        for name in schema.CHANNEL_STATS:
            for layer in info:
                d = st[name][layer["name"]]
                d.resize(steps, axis=0)
                if steps > tail0:
                    d[tail0:steps] = rng.uniform(0, 0.5, size=(steps - tail0, channels)).astype(np.float32)
        _fill(st["step"], steps, block, lambda i, j: np.arange(i, j, dtype=np.int64))
        hist_steps = np.arange(0, steps, detail_every, dtype=np.int64)
        hi = f[schema.TABLE_HIST]
        counts = rng.integers(0, 1000, size=(min(len(hist_steps), 1000), layers, schema.HIST_BINS), dtype=np.uint32)
        for kind in schema.HIST_KINDS:
            _fill(hi[kind], len(hist_steps), 1000, lambda i, j: counts[: j - i])
        _fill(hi["step"], len(hist_steps), block, lambda i, j: hist_steps[i:j])
        sn = f[schema.TABLE_SNAPSHOTS]["step"]
        sn.resize(0, axis=0)
        w.close(clean=True)
    return path
