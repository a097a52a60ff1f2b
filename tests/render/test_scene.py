"""The ParaView reader's logic without ParaView: network arrays, rank combinations, fields, pieces."""

import os

import numpy as np
import pytest

import tview
from tview.render import scene


def test_network_points_carry_the_statistics_at_a_step(small_run):
    run = tview.open_run(small_run[0])
    steps = scene.time_steps(run)
    p = scene.network(run, 0, float(steps[1]) + 0.5)
    infos = scene.channel_layers(run)
    assert len(p.positions) == sum(i["channels"] for i in infos) == len(p.arrays["layer"])
    for li, info in enumerate(infos):
        sel = p.arrays["layer"] == li
        at = float(steps[1]) + 0.5  # each statistic: its latest measured value at or before the time
        for name in ("grad_norm", "act_channel_mean"):
            s, v = run.stat(name, info["name"])
            expected = v[s <= at][-1] if (s <= at).any() else np.nan  # (an activation has no gradient)
            assert np.allclose(p.arrays[name][sel], expected, equal_nan=True)
        assert list(p.arrays["channel"][sel]) == list(range(info["channels"]))
    before = scene.network(run, 0, -1.0)  # before the first step: nothing to show yet
    assert np.isnan(before.arrays["grad_norm"]).all()


def test_a_layer_whose_output_was_nan_has_nan_activation_statistics_in_the_network(nan_conv2_run):
    run = tview.open_run(nan_conv2_run)
    p = scene.network(run, 0, None)
    layer = {info["name"]: k for k, info in enumerate(scene.channel_layers(run))}
    conv1, conv2 = p.arrays["layer"] == layer["conv1"], p.arrays["layer"] == layer["conv2"]
    assert np.isnan(p.arrays["act_channel_zero_frac"][conv2]).all()  # it read 0: every unit alive
    assert np.isfinite(p.arrays["act_channel_zero_frac"][conv1]).all()
    assert (p.arrays["act_nan"][conv2] > 0).all()  # the evidence kept


def test_combining_ranks_leaves_out_what_a_rank_did_not_record_and_keeps_a_recorded_nan():
    measured = np.array([True, False, True, True])  # rank b recorded nothing at point 1 (it had stopped)
    a = scene.Points(np.zeros((4, 3)), {"x": np.array([1.0, 5.0, 2.0, 1.0]), "layer": np.array([0, 0, 1, 1])})
    b = scene.Points(np.zeros((4, 3)), {"x": np.array([3.0, np.nan, np.inf, np.nan]), "layer": np.array([0, 0, 1, 1])},
                     measured={"x": measured})
    mean = scene.combine([a, b], "mean").arrays
    spread = scene.combine([a, b], "spread").arrays
    std = scene.combine([a, b], "std").arrays
    # point 1: b's gap is left out (a's value alone); points 2 and 3: b recorded Inf and NaN, so the combination is
    # NaN (a diverged rank, not averaged away as a nan-aware mean did: that showed 2.0 and 1.0)
    assert np.allclose(mean["x"], [2.0, 5.0, np.nan, np.nan], equal_nan=True)
    assert np.allclose(spread["x"], [2.0, 0.0, np.nan, np.nan], equal_nan=True)
    assert np.allclose(std["x"], [1.0, 0.0, np.nan, np.nan], equal_nan=True)
    assert list(mean["layer"]) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="combine ranks"):
        scene.combine([a], "median")
    with pytest.raises(KeyError, match="missing"):
        scene.spread_of([a, scene.Points(np.zeros((4, 3)), {})], "x")


def test_fields_leave_out_steps_where_nothing_was_recorded(small_run):
    run = tview.open_run(small_run[0])
    steps, grid = scene.layer_field(run, "act_zero_frac", 0)
    full_steps, full = run.stat_matrix("act_zero_frac")
    mask = np.ma.getmaskarray(full)
    keep, rows = ~mask.all(axis=1), ~mask.all(axis=0)
    assert list(steps) == list(full_steps[keep]) and grid.values.shape == (rows.sum(), keep.sum())
    assert [text for text, _ in grid.labels] == [n for n, k in zip(run.layers, rows) if k]  # a name per row
    assert np.array_equal(grid.hidden, mask[keep][:, rows].T)  # unmeasured cells are not drawn
    assert len(grid.x_edges) == len(steps) + 1 and np.all(np.diff(grid.x_edges) > 0)
    assert np.all((grid.x_edges[:-1] < steps) & (steps < grid.x_edges[1:]))  # each cell around its step


def test_filter_and_feature_grids_have_a_cell_per_value_and_hidden_gaps(small_run):
    run = tview.open_run(small_run[0])
    at, g = scene.filter_grid(run, "conv2", None, 0)
    _, w = run.filters("conv2", None, 0)
    assert at == run.snapshot_steps(0)[-1]
    assert (~g.hidden).sum() == w.size and np.isfinite(g.values[~g.hidden]).all()
    assert np.array_equal(g.values[:3, :3], w[0, 0])  # filter 0, input 0 at the top left
    texts = [t for t, _ in g.labels]
    assert texts[:w.shape[0]] == [f"f{k}" for k in range(w.shape[0])] and f"in {w.shape[1] - 1}" in texts
    _, maps, picture = scene.feature_grid(run, "conv1", None, 0, example=1)
    _, fm = run.feature_maps("conv1", None, 0)
    assert (~maps.hidden).sum() == fm[1].size and np.array_equal(maps.values[:8, :8], fm[1, 0])
    assert picture.values.shape == run.probe_inputs(0)[1, 0].shape and picture.x_edges[-1] < 0  # left of the tiles
    with pytest.raises(ValueError, match="probe example 9"):
        scene.feature_grid(run, "conv1", None, 0, example=9)


def test_grid_becomes_cell_data_with_ghost_cells():
    pytest.importorskip("vtkmodules")
    from tview.render import vtk_data
    values = np.array([[1.0, np.nan], [3.0, 4.0]])
    hidden = np.array([[False, True], [False, False]])
    g = vtk_data.grid(values, hidden, np.arange(3.0), np.arange(3.0), "w", [("a", (0.0, 1.0, 0.0))])
    assert g.GetNumberOfCells() == 4 and g.GetDimensions() == (3, 3, 1)
    assert np.array_equal(vtk_data.grid_to_numpy(g, "w"), values, equal_nan=True)
    assert g.GetFieldData().GetAbstractArray("label_text").GetValue(0) == "a"
    with pytest.raises(ValueError, match="edges"):
        vtk_data.grid(values, hidden, np.arange(2.0), np.arange(3.0), "w")


def test_pieces_split_ranks_round_robin():
    assert scene.pieces([0, 1, 2, 3, 4], 0, 2) == [0, 2, 4]
    assert scene.pieces([0, 1, 2, 3, 4], 1, 2) == [1, 3]
    assert scene.pieces([0, 1], 0, 1) == [0, 1]


def test_similarity_points_mark_groups():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 6, 6))
    maps = np.stack([base, base * 2, rng.normal(size=(4, 6, 6))], axis=1)
    p = scene.similarity(maps, 0.9)
    assert list(p.arrays["group"]) == [0, 0, -1] and list(p.arrays["group_size"]) == [2, 2, 1]
    assert p.positions.shape == (3, 3)


def make_ragged_run(folder, ranks=6, steps=40, short=4, short_steps=30):
    """A synthetic run of `ranks` ranks whose rank `short` stopped early (its shard from a shorter run of the
    same job), so every across-rank reduction meets missing values."""
    import shutil

    from tview.store.synthetic import write_synthetic_run
    full, cut = os.path.join(folder, "run"), os.path.join(folder, "cut")
    write_synthetic_run(full, steps, ranks=ranks, layers=3, channels=4, detail_every=10, channel_tail=12)
    write_synthetic_run(cut, short_steps, ranks=ranks, layers=3, channels=4, detail_every=10, channel_tail=12)
    name = f"rank-{short:05d}.h5"
    shutil.copyfile(os.path.join(cut, name), os.path.join(full, name))
    shutil.rmtree(cut)
    return full


@pytest.fixture(scope="module")
def ragged(tmp_path_factory):
    return make_ragged_run(str(tmp_path_factory.mktemp("ragged")))


def mpi_merge(parts):
    """What the plugin's three MPI reductions do with packed partials: SUM, MIN, MAX element-wise."""
    packed = [scene.pack(p) for p in parts]
    return scene.unpack(np.sum([q[0] for q in packed], axis=0), np.min([q[1] for q in packed], axis=0),
                        np.max([q[2] for q in packed], axis=0), parts[0].shape)


def test_partial_reductions_of_shares_equal_numpy_over_all_ranks():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(7, 5, 4)) * 10 + 3
    measured = rng.random(values.shape) >= 0.3  # holes: a rank that recorded nothing at a point
    measured[2] = False  # a rank with nothing at all
    measured[:, 0, 0] = False  # a point no rank has
    values[~measured] = np.nan
    values[5, 1, 1], measured[5, 1, 1] = np.inf, True  # a recorded Inf: the combination there is NaN
    values[3, 2, 2], measured[3, 2, 2] = np.nan, True  # a recorded NaN: likewise
    values[:, 4, 3], measured[:, 4, 3] = np.nan, True  # every rank recorded NaN there: NaN, not a blank
    clean = np.where(measured, values, np.nan)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        expected = {"mean": np.nanmean(clean, 0), "spread": np.nanmax(clean, 0) - np.nanmin(clean, 0),
                    "std": np.nanstd(clean, 0)}
    poisoned = (measured & ~np.isfinite(values)).any(0)
    for want in expected.values():
        want[poisoned] = np.nan
    ranks = list(range(7))
    for n_pieces in (1, 3, 9):  # 9: two processes have no rank at all
        parts = [scene.partial(((values[r], measured[r]) for r in scene.pieces(ranks, k, n_pieces)), (5, 4))
                 for k in range(n_pieces)]
        for merged in (scene.merge(parts), mpi_merge(parts)):
            assert np.array_equal(merged.count, (measured & np.isfinite(values)).sum(0))
            assert np.array_equal(scene.unmeasured(merged), ~measured.any(0))  # blank, not NaN-coloured
            for mode, want in expected.items():
                assert np.allclose(scene.finish(merged, mode), want, equal_nan=True, rtol=1e-9, atol=1e-9), mode
    assert np.isnan(scene.finish(scene.merge(parts), "mean")[[1, 2, 4], [1, 2, 3]]).all()
    nothing = scene.finish(scene.empty_partial((2,)), "mean")
    assert np.isnan(nothing).all()
    with pytest.raises(ValueError, match="shape"):
        scene.accumulate(scene.empty_partial((2,)), np.zeros(3))
    with pytest.raises(ValueError, match="combine ranks by 'median'"):
        scene.finish(scene.empty_partial((2,)), "median")


def test_shares_of_a_ragged_run_reduce_and_gather_to_the_whole(ragged):
    run = tview.open_run(ragged)
    ranks = run.ranks
    steps = scene.field_steps(run, "grad_norm")
    assert len(steps) == 40 and len(run.steps(4)) == 30
    # layer x step field: shares merged == numpy over every rank's matrix on the common steps
    mats = []
    for r in ranks:
        at, m = run.stat_matrix("grad_norm", r)
        mats.append(scene.on_steps(steps, at, np.ma.filled(m.astype(float), np.nan)))
    stack = np.stack(mats)
    assert np.isnan(stack[4, 30:]).all() and np.isfinite(stack[4, :30]).any()
    for n_pieces in (2, 4, 8):
        parts = [scene.layer_field_partial(run, "grad_norm", scene.pieces(ranks, k, n_pieces), steps)
                 for k in range(n_pieces)]
        merged = mpi_merge(parts)
        with np.errstate(invalid="ignore"):
            assert np.allclose(scene.finish(merged, "mean"), np.nanmean(stack, 0), equal_nan=True)
            assert np.allclose(scene.finish(merged, "spread"), np.nanmax(stack, 0) - np.nanmin(stack, 0),
                               equal_nan=True)
        # rank x step field: each share's rows, padded, gathered in process order, back in rank order
        size = scene.share_size(len(ranks), n_pieces)
        blocks = [scene.padded(scene.rank_rows(run, "grad_norm", "block1.conv", scene.pieces(ranks, k, n_pieces),
                                               steps), size) for k in range(n_pieces)]
        rows = scene.gathered_rows(blocks, len(ranks))
        assert np.array_equal(rows, scene.rank_rows(run, "grad_norm", "block1.conv", ranks, steps), equal_nan=True)
    at, grid = scene.rank_field(run, "grad_norm", "block1.conv", ranks, steps, rows)
    assert grid.values.shape == (6, 40) and list(at) == list(steps)
    assert grid.hidden[4, 30:].all() and not grid.hidden[4, :30].any() and not grid.hidden[[0, 5]].any()
    assert np.allclose(grid.values[1], run.stat("grad_norm", "block1.conv", 1)[1])
    assert [t for t, _ in grid.labels][:2] == ["rank 0", "rank 1"] and grid.labels[-1][0] == "block1.conv"


def test_mean_network_from_shares_equals_combining_every_rank(ragged):
    run = tview.open_run(ragged)
    step = 35.0  # rank 4 stopped at 29: left out of the combinations (its last values are not this step's)
    names = scene.statistic_arrays(run)
    nets = [scene.network(run, r, step) for r in run.ranks]
    assert not any(m.any() for m in nets[4].measured.values()) and all(m.any() for m in nets[0].measured.values())
    np.testing.assert_allclose(scene.combine(nets, "mean").arrays["grad_norm"],
                               scene.combine(nets[:4] + nets[5:], "mean").arrays["grad_norm"], equal_nan=True)
    for mode in scene.REDUCED:
        want = scene.combine(nets, mode)
        skeleton = scene.skeleton(run, 0)
        points = len(skeleton.positions)
        parts = [scene.network_partial(run, scene.pieces(run.ranks, k, 8), step, None, names, points)
                 for k in range(8)]  # 8 processes: two have no rank
        got = scene.network_of(skeleton, names, mpi_merge(parts), mode)
        assert np.array_equal(got.positions, want.positions) and got.labels == want.labels
        for name in names + ["layer", "channel"]:
            assert np.allclose(got.arrays[name], want.arrays[name], equal_nan=True), (mode, name)


def record_nan(run_path, rank, table, column, step):
    """Write NaN into a rank's shard where it recorded `column` at `step` (every layer, or every channel of one
    layer for 'name/layer'): what a rank that diverged there leaves."""
    import h5py
    with h5py.File(os.path.join(run_path, f"rank-{rank:05d}.h5"), "r+") as f:
        g = f["probes"][table]
        row = int(np.flatnonzero(g["step"][:] == step)[0])
        g[column][row] = np.nan


@pytest.fixture(scope="module")
def ragged_nan(tmp_path_factory):
    """3 ranks, rank 2 stopped at step 29 of 40; rank 1 recorded a NaN grad_norm at step 10 and a NaN
    act_channel_mean row of block0.conv at step 35 (the other ranks finite there)."""
    path = make_ragged_run(str(tmp_path_factory.mktemp("ragged_nan")), ranks=3, short=2)
    record_nan(path, 1, "grad", "grad_norm", 10)
    record_nan(path, 1, "act_channel", "act_channel_mean/block0.conv", 35)
    return path


def test_a_nan_one_rank_recorded_makes_the_combination_nan_a_step_a_rank_did_not_record_is_left_out(ragged_nan):
    run = tview.open_run(ragged_nan)
    steps = scene.field_steps(run, "grad_norm")
    grads = [scene.on_steps(steps, *(lambda s, m: (s, np.ma.filled(m.astype(float), np.nan)))(
        *run.stat_matrix("grad_norm", r))) for r in run.ranks]  # [steps, layers] per rank, NaN off a rank's steps
    assert np.isnan(grads[1][10]).all() and np.isfinite(grads[0][10]).all() and np.isnan(grads[2][35]).all()
    for mode in scene.REDUCED:
        merged = scene.merge([scene.layer_field_partial(run, "grad_norm", [r], steps) for r in run.ranks])
        at, grid = scene.layer_field_of(run, "grad_norm", steps, merged, mode)
        values, hidden = grid.values.T, grid.hidden.T  # [steps, layers]
        assert np.isnan(values[10]).all() and not hidden[10].any(), mode  # drawn as NaN (magenta), not blank
        with np.errstate(invalid="ignore"):
            want = {"mean": np.mean, "spread": np.ptp, "std": np.std}[mode](np.stack([grads[0][35], grads[1][35]]), 0)
        assert np.allclose(values[35], want), mode  # rank 2 had stopped: left out, not a NaN
        assert np.isfinite(values[np.arange(len(steps)) != 10]).all(), mode
    # the channel x step field and the network at the step
    csteps, channels = scene.channel_steps(run, "act_channel_mean", "block0.conv")
    merged = scene.merge([scene.channel_field_partial(run, "act_channel_mean", "block0.conv", [r], csteps, channels)
                          for r in run.ranks])
    at, grid = scene.channel_field_of("act_channel_mean", csteps, merged, "mean")
    column = list(at).index(35)
    assert np.isnan(grid.values[:, column]).all() and not grid.hidden[:, column].any()
    assert np.isfinite(grid.values[:, list(at).index(36)]).all()
    nets = {step: [scene.network(run, r, step) for r in run.ranks] for step in (10.0, 11.0)}
    for step, want_nan in ((10.0, True), (11.0, False)):
        for mode in scene.REDUCED:
            got = scene.combine(nets[step], mode).arrays["grad_norm"]
            assert (np.isnan(got) if want_nan else np.isfinite(got)).all(), (step, mode)


def test_the_rank_shown_is_one_of_the_runs_ranks_and_a_block_path_names_nested_blocks(ragged):
    from tview.render import blocks
    run = tview.open_run(ragged)  # 6 ranks
    assert blocks.rank_range(run) == (0, 5) and blocks.rank_range(None) == (0, 0)
    assert blocks.shown_rank(run, 3, run.ranks) == (3, None)
    rank, why = blocks.shown_rank(run, 9, run.ranks)
    assert rank == 5 and why.startswith("rank 9 is not a rank of run (ranks 0-5): showing rank 5")
    rank, why = blocks.shown_rank(run, 2, [0, 1, 4, 5])  # ranks 2 and 3 unreadable (damaged shards)
    assert rank == 1 and "rank 2 is not readable in run (readable ranks: 0-1, 4-5)" in why
    names = ["grad_norm", "act_channel_zero_frac/conv2", None]
    assert blocks.match_names(names, ["act_channel_zero_frac", "conv2"]) == (1, 2)  # a name holding a slash
    assert blocks.match_names(names, ["grad_norm", "x"]) == (0, 1) and blocks.match_names(names, ["x"]) is None
    assert blocks.path_parts("/Root/filters/conv2") == blocks.path_parts("filters/conv2") == ["filters", "conv2"]


LENET = ((6, 6, 16, 16, 120, 120, 84, 84, 10),
         ("conv1", "relu1", "conv2", "relu2", "fc1", "relu3", "fc2", "relu4", "fc3"))
TALL = ((16,) * 20, tuple(f"block{i // 2}.{('conv', 'relu')[i % 2]}" for i in range(20)))


def slab_boxes(positions, counts):
    """(xmin, xmax, ymin, ymax) of each layer's channels."""
    edges = np.cumsum((0,) + tuple(counts))
    return [(positions[a:b, 0].min(), positions[a:b, 0].max(), positions[a:b, 1].min(), positions[a:b, 1].max())
            for a, b in zip(edges, edges[1:])]


def apart(a, b, gap=0.5):
    return a[1] + gap < b[0] or b[1] + gap < a[0] or a[3] + gap < b[2] or b[3] + gap < a[2]


@pytest.mark.parametrize("counts,names", [LENET, TALL])
def test_the_network_lies_on_the_xy_plane_its_layers_side_by_side_named_above_them(counts, names):
    """ParaView's default camera looks down -z with +y up: every layer's slab apart from the others on the x-y plane
    (slabs stacked along z lay on top of each other there), in the network's order (left to right, rows from the
    top), its name above it, the names of a row apart, the whole about as wide as a landscape view."""
    positions, anchors = scene.network_layout(counts, names)
    assert positions.shape == (sum(counts), 3) and (positions[:, 2] == 0).all()
    boxes = slab_boxes(positions, counts)
    assert all(apart(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    for box, (x, y, _) in zip(boxes, anchors):
        assert box[0] <= x <= box[1] and box[3] < y < box[3] + scene.LABEL_ROOM  # centred above its slab
    for (x0, y0, _), (x1, y1, _), a, b in zip(anchors, anchors[1:], names, names[1:]):
        assert (y1 == y0 and x1 > x0) or y1 < y0  # reading order
        if y1 == y0:  # room for both names (each CHAR_UNITS a character)
            assert x1 - x0 >= scene.CHAR_UNITS * (len(a) + len(b)) / 2
    width, height = np.ptp(positions[:, 0]), np.ptp([*positions[:, 1], *(y for _, y, _ in anchors)])
    assert 1.0 < width / height < 2.6, (width, height)


def test_a_plain_file_open_colours_the_network_by_a_statistic_every_layer_has_at_the_first_step(small_run):
    from tview.render.views import network_colour
    run = tview.open_run(small_run[0])
    names = scene.statistic_arrays(run)
    assert names[0] != network_colour(names) == "act_channel_zero_frac"  # the first: grad_channel_norm
    first, last = (scene.network(run, 0, float(s)) for s in scene.time_steps(run)[[0, -1]])
    shown = network_colour(names)  # (TinyCNN's ReLU, used twice, has no per-channel values at any step)
    assert np.array_equal(np.isfinite(first.arrays[shown]), np.isfinite(last.arrays[shown]))
    assert np.isnan(first.arrays[names[0]]).any()  # an activation layer has no gradient: NaN (ParaView's yellow)
    assert network_colour(["grad_norm"]) == "grad_norm" and network_colour([]) is None


def test_a_run_opens_where_nan_first_appeared_else_at_its_last_step(nan_conv2_run, small_run):
    nan_run, clean = tview.open_run(nan_conv2_run), tview.open_run(small_run[0])
    onset = scene.first_nonfinite(nan_run)
    assert onset == (0, 0)  # its one step, its one rank
    assert scene.first_nonfinite(clean) is None
    assert scene.onset_note(onset) == "first NaN/Inf at step 0, rank 0: opened there" and scene.onset_note(None) == ""
    steps = [0, 2, 4, 6]
    assert scene.opening_step(steps, None) == 6.0
    assert scene.opening_step(steps, (4, 1)) == 4.0 and scene.opening_step(steps, (3, 1)) == 4.0
    assert scene.opening_step(steps, (9, 0)) == 6.0 and scene.opening_step([], (1, 0)) is None
