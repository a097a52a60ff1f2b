"""The tview reader's output blocks as VTK data: one small builder per block over tview.render.scene, and the
table BUILDERS that the ParaView reader (paraview_plugins/tview_plugin.py) fills its multiblock from.

Adding a block is one builder here and one line in BUILDERS. vtk is imported lazily (through vtk_data)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tview.render import scene, vtk_data
from tview.render.mpi_share import RankShare
from tview.render.views import REDUCED, network_colour
from tview.store.reader import Run


@dataclass
class Request:
    """What one RequestData asks of the run: the step, the layers and statistics selected, the rank (or how the
    ranks combine), this ParaView process's piece and its share of the ranks."""

    run: Run
    step: float | None
    layers: list[str]
    stats: list[str]
    rank: int
    mode: str
    piece: int
    n_pieces: int
    share: RankShare
    example: int = 0
    field_layer: str = ""

    def tag(self, data, step: float | None = None, layer: str | None = None, rank: int | None = None):
        """Field data naming what `data` shows (run, rank, process, step, layer): the captions read it."""
        rank = self.rank if rank is None else rank
        vtk_data.add_field(data, "tview_run", self.run.path)
        vtk_data.add_field(data, "tview_run_name", os.path.basename(os.path.normpath(self.run.path)))
        vtk_data.add_field(data, "tview_rank", int(rank))
        vtk_data.add_field(data, "paraview_piece", int(self.piece))
        vtk_data.add_field(data, "tview_ranks", f"{self.mode} across {self.share.n_ranks} ranks"
                           if self.mode in REDUCED else f"rank {rank}")
        if step is not None:
            vtk_data.add_field(data, "tview_step", float(step))
        if layer is not None:
            vtk_data.add_field(data, "tview_layer", layer)
        return data


def rank_range(run: Run | None) -> tuple[int, int]:
    """The ranks the reader's Rank offers: 0 to the run's world size - 1 (its readable ranks' highest if more)."""
    if run is None:
        return 0, 0
    return 0, max([run.world_size - 1, 0] + list(run.ranks))


def _spans(ranks: list[int]) -> str:
    """Ranks as runs of consecutive numbers: [0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], None
    for i, r in enumerate(ranks):
        start = r if start is None else start
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            out.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ", ".join(out)


def shown_rank(run: Run, rank: int, readable: list[int]) -> tuple[int, str | None]:
    """(the rank shown, None) for a readable rank; else (the nearest readable rank, a message naming the run, the
    rank asked for and the ranks it has): a Rank typed past the run's ranks is clamped, not an empty view."""
    if rank in readable or not readable:
        return rank, None
    shown = min(readable, key=lambda r: (abs(r - rank), r))
    name = os.path.basename(os.path.normpath(run.path))
    low, high = rank_range(run)
    why = f"is not a rank of {name} (ranks {low}-{high})" if not low <= rank <= high else \
        f"is not readable in {name} (readable ranks: {_spans(sorted(readable))})"
    return shown, f"rank {rank} {why}: showing rank {shown} ({run.path})"


def match_names(names: list[str | None], parts: list[str]) -> tuple[int, int] | None:
    """(index of the child, how many of the path's parts its name takes) of the child named by the path's first
    parts (the longest name first: a field block's name 'stat/layer' holds a slash), or None."""
    for k in range(len(parts), 0, -1):
        if "/".join(parts[:k]) in names:
            return names.index("/".join(parts[:k])), k
    return None


def path_parts(path: str) -> list[str]:
    """A block path ('network', 'filters/conv2', or ExtractBlock's '/Root/filters/conv2') as names."""
    parts = [p for p in path.strip().split("/") if p]
    return parts[1:] if parts[:1] == ["Root"] else parts


def pick(data, path: str):
    """The block of a multiblock at `path` (block names from the top; None where there is none)."""
    parts, node = path_parts(path), data
    while parts and node is not None and node.IsA("vtkMultiBlockDataSet"):
        names = [node.GetMetaData(i).Get(node.NAME()) if node.HasMetaData(i) else None
                 for i in range(node.GetNumberOfBlocks())]
        found = match_names(names, parts)
        if found is None:
            return None
        node, parts = node.GetBlock(found[0]), parts[found[1]:]
    return None if parts else node


def group(named_blocks):
    """A vtkMultiBlockDataSet of (name, block or None)."""
    from vtkmodules.vtkCommonDataModel import vtkMultiBlockDataSet
    out = vtkMultiBlockDataSet()
    out.SetNumberOfBlocks(len(named_blocks))
    for i, (name, block) in enumerate(named_blocks):
        out.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), name)
        if block is not None:
            out.SetBlock(i, block)
    return out


def _points(q: Request, p: scene.Points, rank: int, step=None, line=False):
    data = vtk_data.points_to_polydata(p.positions, p.arrays, line=line)
    vtk_data.add_labels(data, p.labels)
    return q.tag(data, step, rank=rank)


def _grid(g: scene.Grid):
    return vtk_data.grid(g.values, g.hidden, g.x_edges, g.y_edges, g.name, g.labels)


def _network_colour(data, stats):
    """views.network_colour of the selected statistics as the active scalars: what a plain ParaView colours the
    points by (a statistic with a value at the first step, on every layer)."""
    name = network_colour([n for n in stats if data.GetPointData().GetArray(n) is not None])
    if name is not None:
        data.GetPointData().SetActiveScalars(name)
    return data


def network(q: Request):
    """Every channel a point on its layer's slab with the selected statistics at the step: one rank's; each rank
    a block (this process's share); or the mean/spread/std of every process's share (reduced over MPI)."""
    run, share = q.run, q.share
    if q.mode == "all":  # each process its piece's ranks (round robin), no exchange
        mine = scene.pieces(run.ranks, q.piece, q.n_pieces)
        return group([(f"rank {r}", _network_colour(_points(q, scene.network(run, r, q.step, q.layers, q.stats), r,
                                                            q.step), q.stats) if r in mine else None)
                      for r in run.ranks])
    if q.mode in REDUCED:
        return _reduced_network(q)
    if not share.root:
        return None
    return _network_colour(_points(q, scene.network(run, q.rank, q.step, q.layers, q.stats), q.rank, q.step), q.stats)


def _reduced_network(q: Request):
    run, share = q.run, q.share
    skeleton = share.on_root(lambda: scene.skeleton(run, share.all_ranks[0], q.layers))
    points = share.from_root([len(skeleton.positions)] if skeleton is not None else [])
    part = scene.network_partial(run, share.ranks, q.step, q.layers, q.stats, int(points[0]) if len(points) else 0,
                                 share.skipped)
    share.done_reading()
    merged = share.reduce(part)
    if merged is None or skeleton is None:
        return None
    return _network_colour(_points(q, scene.network_of(skeleton, q.stats, merged, q.mode), q.rank, q.step), q.stats)


def trajectories(q: Request):
    """Each selected layer's projected weights as a 3D path (step and log step per point), named at its end."""
    def path(layer):
        p = scene.trajectory(q.run, layer, q.rank)
        return _points(q, p, q.rank, line=True) if len(p.positions) else None
    return group([(layer, path(layer)) for layer in q.layers])


def _snapshot_ready(q: Request) -> bool:
    snaps = q.run.snapshot_steps(q.rank)
    return bool(len(snaps)) and snaps[0] <= (q.step if q.step is not None else snaps[-1])


def filters(q: Request):
    """Each filter layer's kernels at the latest snapshot at or before the step (a cell per weight)."""
    def block(layer):
        at, g = scene.filter_grid(q.run, layer, q.step, q.rank)
        return q.tag(_grid(g), at, layer)
    ready = _snapshot_ready(q)
    return group([(layer, block(layer) if ready else None) for layer in q.run.manifest.get("filter_layers", [])])


def feature_maps(q: Request):
    """A tile per channel of the probe example, per probe layer; the example's input picture as block 'input'."""
    blocks, picture = [], None
    ready = _snapshot_ready(q)
    for layer in q.run.manifest.get("probe_layers", []):
        block = None
        if ready:
            at, g, picture = scene.feature_grid(q.run, layer, q.step, q.rank, q.example)
            block = q.tag(_grid(g), at, layer)
        blocks.append((layer, block))
    if picture is not None:
        blocks.append(("input", q.tag(_grid(picture))))
    return group(blocks)


def fields(q: Request):
    """Whole-run fields: layer x step for each layer statistic, channel x step for each selected layer's
    per-channel statistics (x: the training step), of one rank or reduced across ranks (every process)."""
    run = q.run
    wanted = [(stat, None) for stat in q.stats if stat in run.stat_names()]
    wanted += [(stat, info["name"]) for stat in q.stats if stat in run.channel_stat_names()
               for info in scene.channel_layers(run, q.layers)]
    reduced = q.mode in REDUCED
    if not (q.share.root or reduced):
        return group([])

    def block(stat, layer):
        made = _reduced_field(q, stat, layer) if reduced else _one_rank_field(run, stat, layer, q.rank)
        if made is None or not made[1].values.size:
            return None
        steps, g = made
        data = _grid(g)
        vtk_data.add_field(data, "steps", steps.astype(np.float64))
        if reduced:
            vtk_data.add_field(data, "tview_reduction", q.mode)
        return q.tag(data, None, layer)
    return group([(stat if layer is None else f"{stat}/{layer}", block(stat, layer)) for stat, layer in wanted])


def _one_rank_field(run: Run, stat: str, layer: str | None, rank: int):
    try:
        return scene.layer_field(run, stat, rank) if layer is None else scene.channel_field(run, stat, layer, rank)
    except KeyError:  # a layer without per-channel values recorded
        return None


def _reduced_field(q: Request, stat: str, layer: str | None):
    """(steps, Grid) of a field reduced across every process's ranks (on process 0; None elsewhere). Process 0
    picks the step axis (its first rank's) and sends it: no process reads a rank not its own."""
    run, share = q.run, q.share
    ref = share.all_ranks[0]
    if layer is None:
        steps = share.from_root(share.on_root(lambda: scene.field_steps(run, stat, ref)))
        merged = share.reduce(scene.layer_field_partial(run, stat, share.ranks, steps, share.skipped))
        share.done_reading()
        if merged is None or scene.unmeasured(merged).all():
            return None
        return scene.layer_field_of(run, stat, steps, merged, q.mode)

    def axis():
        steps, channels = scene.channel_steps(run, stat, layer, ref)
        return np.concatenate([[channels], steps]) if len(steps) and channels else None
    head = share.from_root(share.on_root(axis))  # None: no per-channel values for this layer
    if len(head) < 2:
        return None
    steps, channels = head[1:], int(head[0])
    part = scene.channel_field_partial(run, stat, layer, share.ranks, steps, channels, share.skipped)
    share.done_reading()
    merged = share.reduce(part)
    if merged is None or scene.unmeasured(merged).all():
        return None
    return scene.channel_field_of(stat, steps, merged, q.mode)


def rank_fields(q: Request):
    """A rank x step field per selected layer statistic of one layer (FieldLayer, else the first measured):
    every process reads its ranks' rows, process 0 gathers them and makes the grid."""
    return group([(stat, _rank_field(q, stat)) for stat in q.stats if stat in q.run.stat_names()])


def _rank_field(q: Request, stat: str):
    run, share = q.run, q.share
    ref = share.all_ranks[0]

    def axis():  # process 0 picks the layer and the steps, and sends them
        layer = q.field_layer if q.field_layer in run.layers else scene.default_layer(run, stat, ref)
        return np.concatenate([[run.layers.index(layer)], scene.field_steps(run, stat, ref)])
    head = share.from_root(share.on_root(axis))
    if len(head) < 2:  # nothing to show (process 0 found no step): on every process alike
        return None
    layer, steps = run.layers[int(head[0])], head[1:]
    rows = share.gather(scene.rank_rows(run, stat, layer, share.ranks, steps, share.skipped))
    share.done_reading()
    if rows is None or not rows[1].any():
        return None
    at, g = scene.rank_field(run, stat, layer, share.all_ranks, steps, rows)
    block = _grid(g)
    vtk_data.add_field(block, "steps", at.astype(np.float64))
    return q.tag(block, None, layer)


Builder = Callable[[Request], object]
# (block name, builder, whether every ParaView process takes part: reductions and rank rows travel over MPI, so
# those builders run on every process in this order; the others only on the first process)
BUILDERS: tuple[tuple[str, Builder, bool], ...] = (
    ("network", network, True),
    ("fields", fields, True),
    ("rank_fields", rank_fields, True),
    ("trajectories", trajectories, False),
    ("filters", filters, False),
    ("feature_maps", feature_maps, False),
)
BLOCKS = tuple(name for name, _, _ in BUILDERS)
DEFAULT_BLOCKS = ("network",)  # what a plain File > Open shows: one picture, not every block on top of another


def fill(output, q: Request, wanted: list[str]) -> None:
    """Fill the multiblock `output` with the blocks named in `wanted` (the others left empty), in BUILDERS'
    order; every process runs the collective builders of the wanted blocks whatever its piece."""
    from vtkmodules.vtkCommonDataModel import vtkMultiBlockDataSet
    output.SetNumberOfBlocks(len(BUILDERS))
    for i, (name, build, collective) in enumerate(BUILDERS):
        output.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), name)
        if name in wanted and (collective or q.share.root):
            block = build(q)
            if block is not None:
                output.SetBlock(i, block)
    q.share.record(output)
