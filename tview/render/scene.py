"""What the ParaView reader shows, as plain numpy: the network's channel points and their arrays at a step,
ranks combined (mean, spread), layer x step fields, trajectories, filter tiles, probe feature maps.

Only numpy and tview.store: it runs inside ParaView's own Python (numpy 1.24, h5py 3.7) and in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tview.render.analysis import similarity_layout
from tview.render.layout import network_positions, tile
from tview.render.summaries import channel_values_at
from tview.store.reader import Run

RANK_MODES = ("one", "all", "mean", "spread")  # one rank; each rank a block; mean or max-min across ranks


@dataclass
class Points:
    """Points with named per-point arrays (a network view, or a trajectory path)."""

    positions: np.ndarray                     # [n, 3]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    line: bool = False                        # draw as one polyline through the points


def time_steps(run: Run) -> np.ndarray:
    """Recorded steps of the first readable rank: ParaView's time steps."""
    return run.steps(run.ranks[0]) if run.ranks else np.zeros(0, dtype=np.int64)


def statistic_arrays(run: Run) -> list[str]:
    """Every statistic the run holds that the network view can show: per-channel ones, then per-layer."""
    return run.channel_stat_names() + run.stat_names()


def channel_layers(run: Run, layers: list[str] | None = None) -> list[dict]:
    """Layers with a known channel count (the network view's slabs), optionally restricted to `layers`."""
    return [info for info in run.layer_info if info.get("channels") and (layers is None or info["name"] in layers)]


def network(run: Run, rank: int, step: float | None, layers: list[str] | None = None,
            arrays: list[str] | None = None) -> Points:
    """Every channel of the chosen layers as a point on its layer's slab, with arrays at `step`: per-channel
    statistics (latest recorded row at or before it) and layer statistics repeated on the layer's channels."""
    infos = channel_layers(run, layers)
    channel_arrays, layer_arrays = run.channel_stat_names(), run.stat_names()
    wanted = list(arrays) if arrays is not None else channel_arrays + layer_arrays
    counts = [int(info["channels"]) for info in infos]
    out = {"layer": np.repeat(np.arange(len(infos)), counts).astype(np.int32),
           "channel": np.concatenate([np.arange(c) for c in counts]).astype(np.int32) if counts else np.zeros(0, np.int32)}
    n = sum(counts)
    names = [info["name"] for info in infos]
    offsets, sizes = dict(zip(names, np.cumsum([0] + counts))), dict(zip(names, counts))
    for name in wanted:
        values = np.full(n, np.nan)
        if name in channel_arrays:  # the latest measured row at or before the step, per layer
            for layer, row, _ in zip(*channel_values_at(run, name, step, rank)):
                c = sizes.get(layer)
                if c is not None and len(row) == c:
                    values[offsets[layer]:offsets[layer] + c] = row
        elif name in layer_arrays:  # the latest measured row of [layers] at or before the step
            _, row = run.layer_values_at(name, step, rank)
            row = np.ma.filled(np.ma.asarray(row, dtype=np.float64), np.nan)
            for layer, c in sizes.items():
                values[offsets[layer]:offsets[layer] + c] = row[run.layer_index(layer)]
        out[name] = values
    return Points(network_positions(counts), out)


def combine(blocks: list[Points], mode: str) -> Points:
    """One Points from several ranks' networks: 'mean' or 'spread' (max - min) of every float array."""
    if mode not in ("mean", "spread"):
        raise ValueError(f"cannot combine ranks by {mode!r}; use 'mean' or 'spread'")
    if not blocks:
        raise ValueError("no rank to combine")
    first = blocks[0]
    out = {}
    for name, values in first.arrays.items():
        if name in ("layer", "channel"):
            out[name] = values
            continue
        stack = np.stack([np.asarray(b.arrays[name], dtype=np.float64) for b in blocks])
        stack = np.where(np.isfinite(stack), stack, np.nan)  # Inf is not averaged: it is a missing value here
        count = np.isfinite(stack).sum(axis=0)
        if mode == "mean":
            combined = np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)
        else:  # fmax/fmin skip NaN; all-NaN stays NaN
            combined = np.fmax.reduce(stack, axis=0) - np.fmin.reduce(stack, axis=0)
        out[name] = combined
    return Points(first.positions, out)


def spread_of(blocks: list[Points], name: str) -> Points:
    """The first block's points with `name`_mean and `name`_spread (max - min) across the blocks."""
    if not blocks:
        raise ValueError("no blocks to compare")
    missing = [i for i, b in enumerate(blocks) if name not in b.arrays]
    if missing:
        raise KeyError(f"array {name!r} missing in block(s) {missing}; arrays: {sorted(blocks[0].arrays)}")
    mean = combine([Points(b.positions, {name: b.arrays[name]}) for b in blocks], "mean").arrays[name]
    spread = combine([Points(b.positions, {name: b.arrays[name]}) for b in blocks], "spread").arrays[name]
    arrays = dict(blocks[0].arrays)
    arrays[f"{name}_mean"], arrays[f"{name}_spread"] = mean, spread
    return Points(blocks[0].positions, arrays)


def layer_field(run: Run, stat: str, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values [layers, steps]): one layer statistic over the whole run, as an image (x: step, y: layer);
    steps where no layer has it (statistics recorded only on detail steps) are left out."""
    steps, m = run.stat_matrix(stat, rank)
    keep = ~np.ma.getmaskarray(m).all(axis=1)
    return steps[keep], np.ma.filled(np.ma.asarray(m[keep], dtype=np.float64), np.nan).T


def channel_field(run: Run, stat: str, layer: str, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values [channels, steps]) of a per-channel statistic, only the steps where it was recorded."""
    steps, m = run.stat(stat, layer, rank)
    return steps, np.asarray(m, dtype=np.float64).T


def trajectory(run: Run, layer: str, rank: int) -> Points:
    """The layer's projected weights as a 3D polyline, with its step per point."""
    steps, coords = run.trajectory(layer, rank)
    keep = np.isfinite(coords).all(axis=1)
    coords = np.asarray(coords[keep], dtype=np.float64)
    if coords.shape[1] < 3:
        coords = np.pad(coords, ((0, 0), (0, 3 - coords.shape[1])))
    return Points(coords[:, :3], {"step": steps[keep].astype(np.float64)}, line=True)


def filter_tiles(run: Run, layer: str, step: float | None, rank: int, max_inputs: int = 16) -> tuple[int, np.ndarray]:
    """(snapshot step, 2D image [rows, cols]): one row of kernels per filter, one kernel per input channel."""
    at, w = run.filters(layer, None if step is None else int(step), rank)
    w = np.asarray(w)[:, :max_inputs]
    cout, cin = w.shape[:2]
    return at, tile(w.reshape(cout * cin, *w.shape[2:]), cin)


def feature_volume(run: Run, layer: str, step: float | None, rank: int, example: int = 0) -> tuple[int, np.ndarray]:
    """(snapshot step, [C, H, W]) feature maps of one probe example."""
    at, maps = run.feature_maps(layer, None if step is None else int(step), rank)
    if not 0 <= example < len(maps):
        raise ValueError(f"probe example {example} out of range: the probe batch has {len(maps)} examples")
    return at, np.asarray(maps[example], dtype=np.float64)


def similarity(maps: np.ndarray, threshold: float) -> Points:
    """Filters of one layer as points (PCA of their probe activations [N, C, H, W]) with their group
    (-1: none): filters whose activations correlate at Pearson r >= threshold, merged transitively."""
    coords, groups = similarity_layout(maps, threshold)
    c = len(coords)
    group = np.full(c, -1, dtype=np.int32)
    for k, g in enumerate(groups):
        group[g] = k
    return Points(coords, {"group": group, "filter": np.arange(c, dtype=np.int32),
                           "group_size": np.array([len(groups[k]) if k >= 0 else 1 for k in group], dtype=np.int32)})


def pieces(ranks: list[int], piece: int, n_pieces: int) -> list[int]:
    """The tview ranks one of `n_pieces` ParaView processes reads (round robin)."""
    return [r for i, r in enumerate(ranks) if i % max(n_pieces, 1) == piece]
