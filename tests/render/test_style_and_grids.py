"""The dashboard's shared look as pure functions: rank colours, titles under the toolbar, log scales, image grids in
the data's units, the snapshot slider, 3D slabs that never meet."""

import json

import numpy as np

from tview.render import analysis, figures, figures3d, image_grids, layout, snapshots, style


def test_a_rank_has_one_colour_in_every_figure():
    steps, v = np.arange(50), np.random.default_rng(0).normal(size=(3, 50))
    lines = figures.ranks_figure(steps, [0, 1, 2], v, "loss", named={2: "rank 2 (slowest)"}, focus=1)
    colours = {t.name.split(" ")[1]: t.line.color for t in lines.data}
    assert colours == {str(r): style.rank_colour(r) for r in range(3)}  # named and focused ranks keep theirs
    scalars = figures.line_figure([figures.Series("rank 1", steps, v[1], style.rank_colour(1))], "loss")
    assert scalars.data[0].line.color == style.rank_colour(1)
    assert len(set(style.rank_colour(r) for r in range(10))) == 10 and style.rank_colour(10) == style.rank_colour(0)


def test_titles_start_below_the_toolbar_row_and_the_plot_below_the_title():
    spec, top = style.title_layout("loss")
    assert spec["yref"] == "container" and spec["yanchor"] == "top" and spec["pad"]["t"] > style.TOOLBAR_PX
    assert top >= spec["pad"]["t"] + style.TITLE_LINE_PX
    long_spec, long_top = style.title_layout("word " * 40)
    assert long_spec["text"].count("<br>") >= 2 and long_top == top + 2 * style.TITLE_LINE_PX
    fig = figures.line_figure([figures.Series("rank 0", np.arange(3), np.ones(3))], "word " * 40)
    assert fig.layout.margin.t == long_top and fig.layout.title.text == long_spec["text"]


def test_log_scale_only_where_positive_values_span_decades():
    assert style.spans_decades([2.3, 0.5, 3e-6]) and not style.spans_decades([2.3, 0.4])
    assert not style.spans_decades([0.0, 1.0, 1e-5])  # a zero has no logarithm
    assert style.use_log("auto", [1, 1e3]) and not style.use_log("linear", [1, 1e3]) and style.use_log("log", [1, 2])
    assert not style.spans_decades([np.nan, 1.0])


def test_heatmap_rows_only_for_layers_with_a_value():
    values = np.full((4, 3), np.nan)
    values[:, 0], values[1, 2] = 1.0, 2.0
    fig = figures.heatmap_figure(np.arange(4), ["conv1", "relu1", "fc"], values, "grad_norm")
    assert list(fig.data[0].y) == ["conv1", "fc"]
    assert figures.heatmap_figure(np.arange(4), ["a", "b", "c"], np.full((4, 3), np.nan), "x").layout.annotations


def test_filter_grid_ticks_are_filter_and_input_channel_indices():
    w = np.random.default_rng(1).normal(size=(16, 6, 5, 5))
    fig = image_grids.filter_grid_figure(w, "conv2")
    assert list(fig.layout.xaxis.ticktext) == [str(i) for i in range(16)]
    assert list(fig.layout.yaxis.ticktext) == [str(i) for i in range(6)]
    z = np.array(fig.data[0].z, dtype=float)
    x0, y0 = int(round(fig.layout.xaxis.tickvals[3] - 2)), int(round(fig.layout.yaxis.tickvals[4] - 2))
    assert np.allclose(z[y0:y0 + 5, x0:x0 + 5], w[3, 4])  # column 3, row 4: filter 3's kernel on input channel 4
    assert fig.data[0].text[y0][x0] == "filter 3, input channel 4, (0, 0)"
    one_input = image_grids.filter_grid_figure(w[:6, :1], "conv1")
    assert one_input.layout.height < fig.layout.height  # a one-row grid is a short figure, not a tall empty one


def test_feature_maps_are_numbered_by_channel():
    maps = np.random.default_rng(2).uniform(size=(16, 8, 8))
    fig = image_grids.feature_map_figure(maps, "conv2")
    assert [a.text for a in fig.layout.annotations] == [f"ch {k}" for k in range(16)]
    assert fig.layout.xaxis.showticklabels is False and "16 of 16 channels" in fig.layout.xaxis.title.text
    assert fig.data[0].colorscale[0][1] != "rgb(5,10,172)"  # never negative: a sequential scale


def test_grid_height_fits_the_grid_within_bounds():
    assert image_grids.grid_height(5, 95, 1000) == 240  # a strip: the least height
    assert image_grids.grid_height(35, 95, 1000) == int(1000 * 35 / 95 + 150)
    assert image_grids.grid_height(100, 10, 1000) == 720


def test_snapshot_slider_marks_and_play():
    steps = list(range(0, 1500, 50))
    marks = snapshots.snapshot_marks(steps)
    assert list(marks) == steps and marks[0] == "0" and marks[1450] == "1450"
    assert sum(1 for v in marks.values() if v) == snapshots.MARKS
    assert snapshots.next_snapshot(steps, 100) == 150 and snapshots.next_snapshot(steps, 1450) == 0


def test_slabs_spaced_by_size_never_meet():
    pos = layout.network_positions([6, 120, 84, 10], by_size=True)
    heights = sorted(set(pos[:, 2]))
    sides = layout.slab_sides([6, 120, 84, 10])
    for k in range(3):
        assert heights[k + 1] - heights[k] >= max(3.0, 0.5 * max(sides[k], sides[k + 1]))
    assert sorted(set(layout.network_positions([4, 9])[:, 2])) == [0.0, 3.0]  # ParaView's default kept


def test_3d_figures_name_layers_steps_and_filters():
    values = [np.zeros(6), np.ones(120)]
    net = figures3d.network_figure(["conv1", "fc1"], values, "t", "zero fraction")
    assert [a.text for a in net.layout.scene.annotations] == ["conv1 (6)", "fc1 (120)"]
    traj = figures3d.trajectory_figure(np.arange(0, 100, 10), np.random.default_rng(3).normal(size=(10, 3)), "t")
    assert [a.text for a in traj.layout.scene.annotations] == ["step 0", "step 90"]
    assert traj.layout.scene.xaxis.title.text == "dir 1"
    sim = figures3d.similarity_figure(np.zeros((4, 3)), [[1, 2]], "t")
    assert [t.name for t in sim.data] == ["in no group (2)", "group 1 (2)"] and list(sim.data[0].text) == ["0", "3"]


def test_a_path_whose_weights_turn_nan_ends_there_and_says_so_and_fractions_keep_their_0_to_1_scale():
    coords = np.random.default_rng(3).normal(size=(10, 3))
    coords[6:] = np.nan
    traj = figures3d.trajectory_figure(np.arange(0, 100, 10), coords, "t")
    assert [a.text for a in traj.layout.scene.annotations] == ["step 0", "step 50"]
    assert "weights NaN/Inf from step 60: the path ends at step 50" in traj.layout.title.text.replace("<br>", " ")
    clean = figures3d.trajectory_figure(np.arange(3), np.zeros((3, 3)), "t")
    assert "NaN" not in clean.layout.title.text
    net = figures3d.network_figure(["relu"], [np.zeros(4)], "t", "zero fraction", bounds=(0.0, 1.0))
    assert (net.data[0].marker.cmin, net.data[0].marker.cmax) == (0.0, 1.0)


def test_closest_pairs_are_the_most_correlated_filters():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(8, 4, 5, 5))
    a[:, 3] = a[:, 1] * 2 + 0.01 * rng.normal(size=(8, 5, 5))
    pairs = analysis.closest_pairs(a, 2)
    assert pairs[0][:2] == (1, 3) and pairs[0][2] > 0.99 and pairs[1][2] < pairs[0][2]


def test_channels_without_a_value_are_drawn_grey_and_named_in_the_legend():
    net = figures3d.network_figure(["conv1", "conv2"], [np.full(4, np.nan), np.arange(6.0) / 6], "t", "zero fraction")
    assert len(net.data[0].x) == 6 and list(net.data[0].marker.color) == list(np.arange(6.0) / 6)
    assert len(net.data[1].x) == 4 and net.data[1].name.startswith("no value")
    json.loads(net.to_json())
