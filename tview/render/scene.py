"""What the ParaView reader shows, as plain numpy: the network's channel points and their arrays at a step,
ranks combined (mean, spread), layer x step fields, trajectories, filter tiles, probe feature maps.

Only numpy and tview.store: it runs inside ParaView's own Python (numpy 1.24, h5py 3.7) and in tests.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from tview.errors import TviewError
from tview.render.analysis import similarity_layout
from tview.render.layout import slab_sides, tile, tile_gaps, tile_origins
from tview.render.summaries import blanked_by_nonfinite, channel_values_shown
from tview.render.views import RANK_MODES, REDUCED  # noqa: F401 (scene.RANK_MODES: the names in one place)
from tview.store.reader import Run


@dataclass
class Points:
    """Points with named per-point arrays (a network view, or a trajectory path)."""

    positions: np.ndarray                     # [n, 3]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    line: bool = False                        # draw as one polyline through the points
    labels: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)  # text at a position
    # per array, True where the rank recorded a value (NaN included: a diverged rank); absent: every value measured
    measured: dict[str, np.ndarray] = field(default_factory=dict)


def time_steps(run: Run) -> np.ndarray:
    """Recorded steps of the first readable rank: ParaView's time steps."""
    return run.steps(run.ranks[0]) if run.ranks else np.zeros(0, dtype=np.int64)


def first_nonfinite(run: Run) -> tuple[int, int] | None:
    """(step, rank) where NaN/Inf first appeared in the run, from the ranks' summaries (no shard scanned): the
    earliest step on any rank and, at that step, the rank that made it (its activations or loss went first; the
    others had it from the all-reduce), the lowest rank on a tie; None for a run without NaN/Inf."""
    keys = [(*key, rank) for rank, s in sorted(run.rank_summaries().items())
            if s.problem is None and (key := s.first_nonfinite_key()) is not None]
    if not keys:
        return None
    step, _, rank = min(keys)
    return int(step), int(rank)


def opening_step(steps, onset: tuple[int, int] | None) -> float | None:
    """The time step a run opens at: the first recorded step at or after where NaN/Inf first appeared (`onset`,
    first_nonfinite's), else the last recorded step; None without steps."""
    steps = np.asarray(steps, dtype=np.float64)
    if not len(steps):
        return None
    after = steps[steps >= onset[0]] if onset is not None else steps[:0]
    return float(after[0] if len(after) else steps[-1])


def onset_note(onset: tuple[int, int] | None) -> str:
    """What a window opened at the first NaN/Inf says of it ("" for a run without)."""
    return f"first NaN/Inf at step {onset[0]}, rank {onset[1]}: opened there" if onset is not None else ""


def statistic_arrays(run: Run) -> list[str]:
    """Every statistic the run holds that the network view can show: per-channel ones, then per-layer."""
    return run.channel_stat_names() + run.stat_names()


def channel_layers(run: Run, layers: list[str] | None = None) -> list[dict]:
    """Layers with a known channel count (the network view's slabs), optionally restricted to `layers`."""
    return [info for info in run.layer_info if info.get("channels") and (layers is None or info["name"] in layers)]


def network(run: Run, rank: int, step: float | None, layers: list[str] | None = None,
            arrays: list[str] | None = None) -> Points:
    """Every channel of the chosen layers as a point on its layer's slab, with arrays at `step`: per-channel
    statistics (latest recorded row at or before it) and layer statistics repeated on the layer's channels. A layer
    whose output held NaN/Inf there has NaN in its activation statistics (a zero fraction of 0 is not what it did),
    its NaN/Inf counts kept. `measured` tells a recorded NaN (kept by a combination of ranks) from no record."""
    infos = channel_layers(run, layers)
    channel_arrays, layer_arrays = run.channel_stat_names(), run.stat_names()
    wanted = list(arrays) if arrays is not None else channel_arrays + layer_arrays
    counts = [int(info["channels"]) for info in infos]
    out = {"layer": np.repeat(np.arange(len(infos)), counts).astype(np.int32),
           "channel": np.concatenate([np.arange(c) for c in counts] or [np.zeros(0)]).astype(np.int32)}
    n = sum(counts)
    names = [info["name"] for info in infos]
    offsets, sizes = dict(zip(names, np.cumsum([0] + counts))), dict(zip(names, counts))
    layer_rows = run.layer_rows_at([name for name in wanted if name in layer_arrays], step, rank)
    of_point = np.repeat([run.layer_index(name) for name in names], counts)  # each point's layer, in run.layers
    measured = {}
    for name in wanted:
        values, measured[name] = np.full(n, np.nan), np.zeros(n, dtype=bool)
        if name in channel_arrays:  # the latest measured row at or before the step, per layer
            for layer, row, _ in zip(*channel_values_shown(run, name, step, rank)[:3]):
                c = sizes.get(layer)
                if c is not None and len(row) == c:
                    values[offsets[layer]:offsets[layer] + c] = row
                    measured[name][offsets[layer]:offsets[layer] + c] = True
        elif name in layer_arrays:  # the latest measured row of [layers] at or before the step
            at, row = layer_rows[name]
            values[:] = np.where(np.ma.getmaskarray(row), np.nan, np.ma.getdata(row))[of_point]
            measured[name][:] = ~np.ma.getmaskarray(row)[of_point]
            blank = [names.index(b) for b in blanked_by_nonfinite(run, name, at, rank) if b in names]
            values[np.isin(out["layer"], blank)] = np.nan
        out[name] = values
    if _stopped_before(run, rank, step):  # its last rows are not this step's: left out of a combination of ranks
        measured = {name: np.zeros(n, dtype=bool) for name in measured}
    positions, anchors = network_layout(tuple(counts), tuple(names))
    labels = [(slab_label(name, c), anchor) for name, c, anchor in zip(names, counts, anchors)]
    return Points(positions.copy(), out, labels=labels, measured=measured)


def _stopped_before(run: Run, rank: int, step: float | None) -> bool:
    """Whether the rank's last recorded step is before `step` (it stopped early, in a ragged run)."""
    if step is None:
        return False
    steps = run.steps(rank)
    return bool(len(steps)) and float(steps[-1]) < float(step)


NETWORK_ASPECT = 1.6  # width / height the network's rows aim at: a landscape view's
SLAB_GAP = 1.5        # between two slabs' places in a row (in channel spacings)
LABEL_ROOM = 2.0      # above each row, for its slabs' names
CHAR_UNITS = 0.7      # how wide a name's character is taken to be (in channel spacings) when slabs are placed


def slab_label(name: str, channels: int) -> str:
    return f"{name} ({channels})"


def _slot_widths(sides: list[int], texts: tuple[str, ...]) -> list[float]:
    """Each slab's place in its row: its side, or its name if that is wider (names never run into each other)."""
    return [max(float(side), CHAR_UNITS * len(text)) for side, text in zip(sides, texts)]


def _row_split(widths: list[float], sides: list[int], aspect: float) -> list[list[int]]:
    """The slabs of each row, in the network's order: of the splits into rows of equal count, the one whose box is
    nearest `aspect` wide to tall."""
    def box(rows):
        width = max(sum(widths[i] for i in row) + SLAB_GAP * (len(row) - 1) for row in rows)
        return width / sum(max(sides[i] for i in row) + LABEL_ROOM for row in rows)
    splits = [[list(range(i, min(i + per, len(widths)))) for i in range(0, len(widths), per)]
              for per in sorted({-(-len(widths) // r) for r in range(1, len(widths) + 1)})]
    return min(splits, key=lambda rows: abs(math.log(box(rows) / aspect))) if splits else []


def _slab(channels: int, side: int, left: float, top: float) -> np.ndarray:
    """A layer's channels on a square, row by row from its top left corner (channel 0), on z = 0."""
    idx = np.arange(channels)
    return np.stack([left + idx % side, top - idx // side, np.zeros(channels)], axis=1).astype(np.float64)


@functools.lru_cache(maxsize=16)
def network_layout(counts: tuple[int, ...], names: tuple[str, ...],
                   aspect: float = NETWORK_ASPECT) -> tuple[np.ndarray, tuple[tuple[float, float, float], ...]]:
    """(positions [n, 3], each slab's label anchor): every layer a square slab of its channels on the x-y plane, the
    slabs side by side in the network's order, in rows from the top, their names centred above them, the whole
    about `aspect` wide to tall and centred on the origin. ParaView's default camera (down -z, +y up) sees every
    layer apart (slabs stacked along z were drawn on top of each other)."""
    sides = slab_sides(list(counts))
    widths = _slot_widths(sides, tuple(slab_label(n, c) for n, c in zip(names, counts)))
    slabs, anchors, top = [None] * len(counts), [None] * len(counts), 0.0
    for row in _row_split(widths, sides, aspect):
        left = 0.0
        for i in row:
            middle = left + widths[i] / 2
            slabs[i] = _slab(counts[i], sides[i], middle - (sides[i] - 1) / 2, top - LABEL_ROOM)
            anchors[i] = (middle, top - LABEL_ROOM + 0.8, 0.0)
            left += widths[i] + SLAB_GAP
        top -= LABEL_ROOM + max(sides[i] for i in row)
    positions = np.concatenate(slabs) if slabs else np.zeros((0, 3))
    centre = (positions.min(axis=0) + positions.max(axis=0)) / 2 if len(positions) else np.zeros(3)
    centre[2] = 0.0
    positions = positions - centre
    positions.flags.writeable = False
    return positions, tuple(tuple(float(v) for v in np.subtract(a, centre)) for a in anchors)


def combine(blocks: list[Points], mode: str) -> Points:
    """One Points from several ranks' networks: 'mean', 'spread' (max - min) or 'std' of every float array; a value
    a rank did not record is left out, a NaN it recorded makes the result NaN (see accumulate)."""
    check_mode(mode)
    if not blocks:
        raise ValueError("no rank to combine")
    first = blocks[0]
    out = {}
    for name, values in first.arrays.items():
        if name in ("layer", "channel"):
            out[name] = values
            continue
        out[name] = finish(partial([(b.arrays[name], b.measured.get(name)) for b in blocks], np.shape(values)), mode)
    return Points(first.positions, out, labels=first.labels)


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


@dataclass
class Grid:
    """Cells on a plane, one per weight, pixel or (layer, step): values [rows, cols] with row 0 at the top,
    cells left undrawn where `hidden` (gaps between tiles, statistics not measured there), the cell edges
    along x (cols + 1) and y (rows + 1, increasing upwards), and text labels at 3D positions."""

    values: np.ndarray
    hidden: np.ndarray
    x_edges: np.ndarray
    y_edges: np.ndarray
    name: str
    labels: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)


def _unit_grid(values: np.ndarray, hidden: np.ndarray, name: str, x0: float = 0.0, scale: float = 1.0) -> Grid:
    rows, cols = values.shape
    return Grid(values, hidden, x0 + scale * np.arange(cols + 1, dtype=np.float64),
                scale * np.arange(rows + 1, dtype=np.float64), name)


def _every(n: int, most: int = 24) -> int:
    """Label every k-th of n items so that at most about `most` labels show."""
    return max(1, -(-n // most))


def filter_grid(run: Run, layer: str, step: float | None, rank: int, max_inputs: int = 16) -> tuple[int, Grid]:
    """(snapshot step, Grid 'weight'): one row of kernels per filter, one kernel per input channel, one cell
    per weight, gaps undrawn; labels 'f<k>' left of the rows and 'in <c>' above the columns."""
    at, w = run.filters(layer, None if step is None else int(step), rank)
    w = np.asarray(w, dtype=np.float64)[:, :max_inputs]
    cout, cin, kh, kw = w.shape
    values = tile(w.reshape(cout * cin, kh, kw), cin)
    g = _unit_grid(values, tile_gaps(cout * cin, kh, kw, cin), "weight")
    top = values.shape[0]
    g.labels = [(f"f{k}", (-0.6, top - (k * (kh + 1) + kh / 2), 0.0)) for k in range(0, cout, _every(cout))]
    g.labels += [(f"in {c}", (c * (kw + 1) + kw / 2, top + 0.6, 0.0)) for c in range(0, cin, _every(cin))]
    return at, g


def feature_grid(run: Run, layer: str, step: float | None, rank: int,
                 example: int = 0) -> tuple[int, Grid, Grid | None]:
    """(snapshot step, Grid 'activation' with one tile per channel of one probe example labelled 'c<k>',
    Grid 'input' of that example's input (its first channel) beside it on the left, as tall, or None)."""
    at, maps = probe_example_maps(run, layer, step, rank, example)
    c, h, w = maps.shape
    columns, gap = int(np.ceil(np.sqrt(c))), max(1, h // 4)  # room for each tile's label above it
    values = tile(maps, columns, gap)
    g = _unit_grid(values, tile_gaps(c, h, w, columns, gap), "activation")
    top = values.shape[0]
    g.labels = [(f"c{k}", (col + w / 2, top - row + 0.3, 0.0))
                for k, (row, col) in enumerate(tile_origins(c, h, w, columns, gap)) if k % _every(c, 64) == 0]
    inputs = run.probe_inputs(rank)
    if inputs is None or example >= len(inputs):
        return at, g, None
    image = np.asarray(inputs[example], dtype=np.float64).reshape(-1, *np.shape(inputs)[-2:])[0]
    scale = top / image.shape[0]
    x0 = -(image.shape[1] * scale) - 3.0
    picture = _unit_grid(image, np.zeros(image.shape, dtype=bool), "input", x0=x0, scale=scale)
    picture.labels = [(f"input {example}", (x0 + image.shape[1] * scale / 2, top + 0.4, 0.0))]
    return at, g, picture


def _step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges along the step axis: halfway between recorded steps, half a gap beyond the ends."""
    s = np.asarray(steps, dtype=np.float64)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _field_grid(steps: np.ndarray, m: np.ma.MaskedArray, names: list[str], stat: str, tall: float = 1 / 3) -> Grid:
    """[steps, rows] masked values as a Grid: x the training step, one row per name (top: the first),
    rows `tall` of the width tall in all, masked cells undrawn, names left of their rows."""
    values = np.ma.filled(np.ma.asarray(m, dtype=np.float64), np.nan).T
    hidden = np.ma.getmaskarray(m).T.copy()
    x = _step_edges(steps)
    span = float(x[-1] - x[0]) or 1.0
    height = span * tall / max(len(names), 1)
    g = Grid(values, hidden, x, height * np.arange(len(names) + 1, dtype=np.float64), stat)
    g.labels = [(name, (x[0] - span * 0.01, height * (len(names) - i - 0.5), 0.0)) for i, name in enumerate(names)]
    return g


def layer_field(run: Run, stat: str, rank: int) -> tuple[np.ndarray, Grid]:
    """(steps, Grid): one layer statistic over the whole run, a row per layer that has it (x: step); steps
    where no layer has it (statistics recorded only on detail steps) are left out, unmeasured cells undrawn."""
    steps, m = run.stat_matrix(stat, rank)
    return _layer_grid(run, steps, m, stat)


def _layer_grid(run: Run, steps: np.ndarray, m: np.ma.MaskedArray, stat: str) -> tuple[np.ndarray, Grid]:
    mask = np.ma.getmaskarray(m)
    keep, rows = ~mask.all(axis=1), ~mask.all(axis=0)
    names = [name for name, k in zip(run.layers, rows) if k]
    return steps[keep], _field_grid(steps[keep], m[keep][:, rows], names, stat)


def channel_field(run: Run, stat: str, layer: str, rank: int) -> tuple[np.ndarray, Grid]:
    """(steps, Grid) of a per-channel statistic of one layer: a row per channel, only the steps where recorded."""
    steps, v = run.stat(stat, layer, rank)
    v = np.asarray(v, dtype=np.float64).reshape(len(steps), -1)
    keep = ~np.isnan(v).all(axis=1)  # rows with nothing measured (older stores pad them with NaN)
    return _channel_grid(steps[keep], np.ma.masked_array(v[keep], mask=np.zeros(v[keep].shape, dtype=bool)), stat)


def _channel_grid(steps: np.ndarray, m: np.ma.MaskedArray, stat: str) -> tuple[np.ndarray, Grid]:
    g = _field_grid(steps, m, [f"c{k}" for k in range(m.shape[1])], stat)
    every = _every(len(g.labels), 32)
    g.labels = [lab for i, lab in enumerate(g.labels) if i % every == 0]
    return steps, g


def trajectory(run: Run, layer: str, rank: int) -> Points:
    """The layer's projected weights as a 3D polyline with its step and log10(step + 1) per point (most motion
    is early: colour by the log), the layer's name at its end."""
    steps, coords = run.trajectory(layer, rank)
    keep = np.isfinite(coords).all(axis=1)
    coords = np.asarray(coords[keep], dtype=np.float64)
    if coords.shape[1] < 3:
        coords = np.pad(coords, ((0, 0), (0, 3 - coords.shape[1])))
    s = steps[keep].astype(np.float64)
    p = Points(coords[:, :3], {"step": s, "log_step": np.log10(s + 1.0)}, line=True)
    if len(s):
        p.labels = [(layer, tuple(float(v) for v in p.positions[-1]))]
    return p


def probe_example_maps(run: Run, layer: str, step: float | None, rank: int, example: int = 0) -> tuple[int, np.ndarray]:
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


# -- reductions across ranks, in pieces: each process reduces its own ranks, then the partials combine ---------

@dataclass
class Partial:
    """Across some ranks, per element: how many ranks had a finite value there, their sum and sum of squares,
    their min and max (+inf and -inf where none had one: MPI's MIN and MAX know no NaN rule), and how many
    recorded a NaN or Inf there (`bad`: any makes the combined value NaN; a rank that recorded nothing is left
    out)."""

    count: np.ndarray
    total: np.ndarray
    squares: np.ndarray
    low: np.ndarray
    high: np.ndarray
    bad: np.ndarray = None

    def __post_init__(self):
        if self.bad is None:
            self.bad = np.zeros(self.count.shape)

    @property
    def shape(self) -> tuple:
        return self.count.shape


def check_mode(mode: str) -> None:
    if mode not in REDUCED:
        raise ValueError(f"cannot combine ranks by {mode!r}; use one of {', '.join(REDUCED)}")


def empty_partial(shape) -> Partial:
    """The partial of no rank at all (a process with no share of the ranks)."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    return Partial(np.zeros(shape), np.zeros(shape), np.zeros(shape), np.full(shape, np.inf), np.full(shape, -np.inf),
                   np.zeros(shape))


def accumulate(p: Partial, values, measured=None) -> Partial:
    """Add one rank's values to `p` (in place; returned). `measured` (default: everywhere) is where the rank recorded
    a value: a NaN or Inf recorded there is counted in `bad` (the combination is NaN: one diverged rank is not
    averaged away); where it recorded nothing (a rank that stopped early), the rank is left out."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape != p.shape:
        raise ValueError(f"a rank's values have shape {v.shape}, the others {p.shape}")
    seen = np.ones(v.shape, dtype=bool) if measured is None else np.asarray(measured, dtype=bool)
    ok = np.isfinite(v) & seen
    x = np.where(ok, v, 0.0)
    p.bad += seen & ~np.isfinite(v)
    p.count += ok
    p.total += x
    p.squares += x * x
    np.minimum(p.low, np.where(ok, v, np.inf), out=p.low)
    np.maximum(p.high, np.where(ok, v, -np.inf), out=p.high)
    return p


def partial(values_per_rank, shape) -> Partial:
    """The partial of several ranks' values (an iterable: one rank's array in memory at a time), each an array (every
    value recorded) or (values, measured) (measured None: every value recorded)."""
    p = empty_partial(shape)
    for item in values_per_rank:
        accumulate(p, *(item if isinstance(item, tuple) else (item,)))
    return p


def merge(parts: list[Partial]) -> Partial:
    """Partials of disjoint sets of ranks combined: what MPI's SUM, SUM, SUM, MIN, MAX reductions compute."""
    if not parts:
        raise ValueError("no partial to merge")
    out = empty_partial(parts[0].shape)
    for q in parts:
        if q.shape != out.shape:
            raise ValueError(f"partials of shapes {out.shape} and {q.shape} cannot be merged")
        out.count += q.count
        out.bad += q.bad
        out.total += q.total
        out.squares += q.squares
        np.minimum(out.low, q.low, out=out.low)
        np.maximum(out.high, q.high, out=out.high)
    return out


def unmeasured(p: Partial) -> np.ndarray:
    """Where no rank recorded anything (a blank cell), as opposed to a NaN a rank recorded (a NaN cell)."""
    return (p.count == 0) & (p.bad == 0)


def finish(p: Partial, mode: str) -> np.ndarray:
    """The mean, spread (max - min) or population std across the ranks that recorded a value; NaN where none did
    and where any recorded a NaN or Inf."""
    check_mode(mode)
    n = np.maximum(p.count, 1)
    with np.errstate(invalid="ignore"):
        if mode == "mean":
            out = p.total / n
        elif mode == "spread":
            out = p.high - p.low
        else:
            out = np.sqrt(np.maximum(p.squares / n - (p.total / n) ** 2, 0.0))
    return np.where((p.count > 0) & (p.bad == 0), out, np.nan)


def pack(p: Partial) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, sum, squares and bad as one flat array to SUM; low to MIN; high to MAX) for an MPI reduction."""
    return (np.concatenate([p.count.ravel(), p.total.ravel(), p.squares.ravel(), p.bad.ravel()]),
            p.low.ravel().copy(), p.high.ravel().copy())


def unpack(sums: np.ndarray, low: np.ndarray, high: np.ndarray, shape) -> Partial:
    """The inverse of pack() (on reduced arrays)."""
    count, total, squares, bad = np.asarray(sums, dtype=np.float64).reshape((4,) + tuple(shape))
    return Partial(count, total, squares, np.asarray(low, dtype=np.float64).reshape(shape),
                   np.asarray(high, dtype=np.float64).reshape(shape), bad)


def _readable(read, ranks, skipped: list | None = None):
    """read(rank) for each rank, leaving out (and noting in `skipped`) ranks that cannot be read."""
    for r in ranks:
        try:
            yield read(r)
        except (KeyError, TviewError, OSError) as exc:
            if skipped is not None:
                skipped.append((r, str(exc)))


def skeleton(run: Run, rank: int, layers: list[str] | None = None) -> Points:
    """The network's points with layer and channel only (no statistic read): what a combined network is drawn on."""
    return network(run, rank, None, layers, arrays=[])


def network_partial(run: Run, ranks: list[int], step: float | None, layers: list[str] | None, names: list[str],
                    points: int, skipped: list | None = None) -> Partial:
    """Partial [names, points] of the network arrays `names` over `ranks` (possibly none): one process's share of
    a mean/spread network of `points` channel points (a rank whose network differs in size is left out)."""
    shape = (len(names), points)

    def read(r):
        p = network(run, r, step, layers, names)
        values = np.stack([p.arrays[name] for name in names]) if names else np.zeros((0, len(p.positions)))
        if values.shape != shape:
            raise KeyError(f"rank {r}'s network has {values.shape[1]} channel points, rank 0's {points}")
        return values, np.stack([p.measured[name] for name in names]) if names else None
    return partial(_readable(read, ranks, skipped), shape)


def network_of(skeleton: Points, names: list[str], p: Partial, mode: str) -> Points:
    """The combined network from the merged Partial of network_partial()."""
    values = finish(p, mode)
    return Points(skeleton.positions, dict(skeleton.arrays, **dict(zip(names, values))), labels=skeleton.labels)


def field_steps(run: Run, stat: str, ref: int | None = None) -> np.ndarray:
    """The step axis of a statistic's fields across ranks: the steps its probe ran on the reference rank (the
    first by default; other ranks' values are placed on them, missing where a rank lacks a step)."""
    ref = _reference(run, ref)
    return run.stat_matrix(stat, ref)[0] if ref is not None else np.zeros(0, dtype=np.int64)


def _reference(run: Run, ref: int | None) -> int | None:
    return ref if ref is not None else (run.ranks[0] if run.ranks else None)


def on_steps(steps: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values [len(at), ...] recorded at `at`, placed on `steps` (NaN where a step is not among `at`)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full((len(steps),) + values.shape[1:], np.nan)
    at = np.asarray(at)
    if not len(at) or not len(steps):
        return out
    i = np.clip(np.searchsorted(at, steps), 0, len(at) - 1)
    found = at[i] == steps
    out[found] = values[i[found]]
    return out


def measured_on_steps(steps: np.ndarray, at: np.ndarray, measured) -> np.ndarray:
    """Booleans [len(at), ...] (where a rank recorded a value at `at`) placed on `steps` (False off `at`)."""
    return on_steps(steps, at, np.asarray(measured, dtype=np.float64)) > 0


def layer_field_partial(run: Run, stat: str, ranks: list[int], steps: np.ndarray,
                        skipped: list | None = None) -> Partial:
    """Partial [steps, layers] of one layer statistic over `ranks`, on the common step axis `steps`."""
    def read(r):
        at, m = run.stat_matrix(stat, r)
        return (on_steps(steps, at, np.ma.filled(np.ma.asarray(m, dtype=np.float64), np.nan)),
                measured_on_steps(steps, at, ~np.ma.getmaskarray(m)))
    return partial(_readable(read, ranks, skipped), (len(steps), len(run.layers)))


def layer_field_of(run: Run, stat: str, steps: np.ndarray, p: Partial, mode: str) -> tuple[np.ndarray, Grid]:
    """(steps, Grid) of the layer x step field of the mean/spread/std across ranks (as layer_field)."""
    m = np.ma.masked_array(finish(p, mode), mask=unmeasured(p))
    return _layer_grid(run, steps, m, f"{stat}")


def rank_rows(run: Run, stat: str, layer: str, ranks: list[int], steps: np.ndarray,
              skipped: list | None = None) -> np.ndarray:
    """[2, len(ranks), len(steps)]: one layer statistic of each rank on the common step axis (NaN where not
    measured) and 1 where measured (a measured NaN, a diverged rank, is kept apart from a missing value)."""
    out = np.full((2, len(ranks), len(steps)), np.nan)
    out[1] = 0.0
    for k, r in enumerate(ranks):
        try:
            at, v = run.stat(stat, layer, r)
        except (KeyError, TviewError, OSError) as exc:
            if skipped is not None:
                skipped.append((r, str(exc)))
            continue
        out[0, k] = on_steps(steps, at, v)
        out[1, k] = on_steps(steps, at, np.ones(len(at)))
    out[1] = np.nan_to_num(out[1])
    return out


def share_size(n_ranks: int, n_pieces: int) -> int:
    """Rows every process sends when the ranks' rows are gathered (the largest share: equal-sized messages)."""
    return -(-n_ranks // max(n_pieces, 1))


def padded(rows: np.ndarray, size: int) -> np.ndarray:
    """A process's rows [2, k, S] padded to [2, size, S] (unmeasured rows) for an equal-sized gather."""
    out = np.zeros((rows.shape[0], size) + rows.shape[2:])
    out[0] = np.nan
    out[:, :rows.shape[1]] = rows
    return out


def gathered_rows(blocks: list[np.ndarray], n_ranks: int) -> np.ndarray:
    """The padded rows of every process (in process order) back in rank order (the inverse of pieces())."""
    n = len(blocks)
    out = np.zeros((blocks[0].shape[0], n_ranks) + blocks[0].shape[2:])
    for piece, block in enumerate(blocks):
        mine = len(range(piece, n_ranks, n))
        out[:, piece::n] = block[:, :mine]
    return out


def rank_field(run: Run, stat: str, layer: str, ranks: list[int], steps: np.ndarray,
               rows: np.ndarray) -> tuple[np.ndarray, Grid]:
    """(steps, Grid) of one layer statistic, a row per rank (top: the first), x the step; cells a rank did not
    measure undrawn, a measured NaN kept (NaN colour); steps where no rank measured it left out."""
    values, measured = rows[0], rows[1] > 0
    keep = measured.any(axis=0)
    m = np.ma.masked_array(values[:, keep].T, mask=~measured[:, keep].T)
    g = _field_grid(steps[keep], m, [f"rank {r}" for r in ranks], f"{stat}", tall=0.6)
    every = _every(len(ranks), 24)
    g.labels = [lab for i, lab in enumerate(g.labels) if i % every == 0]
    g.labels.append((layer, (float(g.x_edges[0] + g.x_edges[-1]) / 2, float(g.y_edges[-1]) * 1.03, 0.0)))
    return steps[keep], g


def default_layer(run: Run, stat: str, ref: int | None = None) -> str:
    """The layer a rank x step field shows when none is named: the first the statistic was measured on (on the
    reference rank, the first by default)."""
    ref = _reference(run, ref)
    if ref is None:
        raise TviewError(f"{run.path}: no readable rank")
    _, m = run.stat_matrix(stat, ref, max_points=200)
    measured = ~np.ma.getmaskarray(m).all(axis=0)
    return run.layers[int(np.argmax(measured))] if measured.any() else run.layers[0]


def channel_steps(run: Run, stat: str, layer: str, ref: int | None = None) -> tuple[np.ndarray, int]:
    """(steps, channels) of a per-channel statistic's field across ranks: the reference rank's measured rows
    (the first rank by default). Raises KeyError where the layer has no per-channel values."""
    ref = _reference(run, ref)
    if ref is None:
        return np.zeros(0, dtype=np.int64), 0
    steps, v = run.stat(stat, layer, ref)
    v = np.asarray(v, dtype=np.float64).reshape(len(steps), -1)
    return steps[~np.isnan(v).all(axis=1)], v.shape[1]


def channel_field_partial(run: Run, stat: str, layer: str, ranks: list[int], steps: np.ndarray, channels: int,
                          skipped: list | None = None) -> Partial:
    """Partial [steps, channels] of a per-channel statistic of one layer over `ranks`, on the common steps."""
    def read(r):  # every row run.stat gives was measured: a NaN in it was recorded
        at, v = run.stat(stat, layer, r)
        v = np.asarray(v, dtype=np.float64).reshape(len(at), -1)
        return on_steps(steps, at, v), measured_on_steps(steps, at, np.ones(v.shape))
    return partial(_readable(read, ranks, skipped), (len(steps), channels))


def channel_field_of(stat: str, steps: np.ndarray, p: Partial, mode: str) -> tuple[np.ndarray, Grid]:
    """(steps, Grid) of the channel x step field of the mean/spread/std across ranks (as channel_field)."""
    blank = unmeasured(p)
    keep = ~blank.all(axis=1)
    values = finish(p, mode)[keep]
    return _channel_grid(steps[keep], np.ma.masked_array(values, mask=blank[keep]), stat)
