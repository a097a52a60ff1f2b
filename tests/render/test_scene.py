"""The ParaView reader's logic without ParaView: network arrays, rank combinations, fields, pieces."""

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


def test_combining_ranks_skips_missing_values():
    a = scene.Points(np.zeros((3, 3)), {"x": np.array([1.0, np.nan, 2.0]), "layer": np.array([0, 0, 1])})
    b = scene.Points(np.zeros((3, 3)), {"x": np.array([3.0, np.nan, np.inf]), "layer": np.array([0, 0, 1])})
    mean = scene.combine([a, b], "mean").arrays
    spread = scene.combine([a, b], "spread").arrays
    assert np.allclose(mean["x"], [2.0, np.nan, 2.0], equal_nan=True)
    assert np.allclose(spread["x"], [2.0, np.nan, 0.0], equal_nan=True)
    assert list(mean["layer"]) == [0, 0, 1]
    with pytest.raises(ValueError, match="combine ranks"):
        scene.combine([a], "median")
    with pytest.raises(KeyError, match="missing"):
        scene.spread_of([a, scene.Points(np.zeros((3, 3)), {})], "x")


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
