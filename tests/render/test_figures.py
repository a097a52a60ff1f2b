"""Figures from arrays: point caps (downsampling), NaN as gaps, tiling, histogram trimming, real runs."""

import json

import numpy as np
import pytest

from tview.render import figures, layout, summaries
from tview.store import schema


def points(fig):
    return [len(t.x) if t.x is not None else len(t.z) for t in fig.data]


def test_a_million_point_series_is_sent_as_at_most_max_points():
    n = 1_000_000
    fig = figures.line_figure([figures.Series("rank 0", np.arange(n), np.sin(np.arange(n) / 1e4))], "loss",
                              smoothing=0.5)
    assert max(points(fig)) <= figures.MAX_POINTS and len(fig.data) == 2  # raw (faint) and smoothed
    assert fig.data[1].x[0] == 0  # the first step is kept
    heat = figures.heatmap_figure(np.arange(n), ["a", "b"], np.ones((n, 2)), "grad_norm")
    assert len(heat.data[0].x) <= figures.MAX_HEATMAP_ROWS


def test_nan_and_inf_become_gaps_and_the_figure_serialises():
    fig = figures.line_figure([figures.Series("r", np.arange(4), np.array([1.0, np.nan, np.inf, 2.0]))], "x")
    assert list(fig.data[0].y) == [1.0, None, None, 2.0]
    json.loads(fig.to_json())  # plotly's JSON has no NaN tokens in it


def test_a_series_that_turns_nan_is_marked_and_its_smoothed_line_stops_there():
    values = np.r_[np.linspace(2.0, 1.0, 10), np.full(10, np.nan)]
    fig = figures.line_figure([figures.Series("rank 1", np.arange(0, 40, 2), values)], "loss", smoothing=0.9)
    smoothed = fig.data[1].y
    assert all(v is not None for v in smoothed[:10]) and all(v is None for v in smoothed[10:])  # not held flat
    marks = [(shape.x0, a.text) for shape, a in zip(fig.layout.shapes, fig.layout.annotations)]
    assert marks == [(20, "rank 1: NaN from step 20")]
    clean = figures.line_figure([figures.Series("r", np.arange(3), np.ones(3))], "x")
    assert not clean.layout.shapes


def test_the_networks_path_ends_where_a_layers_weights_turn_nan():
    t = np.ones((5, 3, 2))
    t[:, 2] = np.nan  # a layer with no trajectory: left out
    t[3:, 1] = np.nan  # a layer's weights NaN from the 4th record
    total = summaries.sum_layers(t)
    assert np.array_equal(total[:3], np.full((3, 2), 2.0)) and np.isnan(total[3:]).all()


def test_the_nan_mark_takes_the_exact_first_step_where_the_line_is_every_kth_value():
    values = np.r_[np.ones(5), np.full(5, np.nan)]  # every 3rd record of a run: the NaN came at step 13, not 15
    fig = figures.line_figure([figures.Series("rank 0", np.arange(0, 30, 3), values, first_bad=13)], "loss")
    assert [a.text for a in fig.layout.annotations] == ["rank 0: NaN/Inf from step 13"]


def test_tile_places_each_image_with_nan_gaps():
    imgs = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    out = layout.tile(imgs, 2)
    assert out.shape == (3 * 3 - 1, 2 * 4 - 1)
    assert np.array_equal(out[3:5, 4:7], imgs[3])  # image 3: row 1, column 1
    assert np.isnan(out[2]).all() and np.isnan(out[:, 3]).all()


def test_histogram_figure_trims_bins_empty_at_every_step():
    counts = np.zeros((3, schema.HIST_BINS))
    counts[:, schema.HIST_HALF] = 5           # the exact-zero bin
    counts[1, schema.HIST_HALF + 10] = 2
    fig = figures.histogram_figure(np.arange(3), schema.hist_edges(), counts, "h")
    # zero, a bin either side, the 6 empty bins between as one blank column, the bin with counts and one either side
    assert list(fig.data[0].x[:3]) == ["-1.8e-8 to 0 (0 excluded)", "exactly 0", "0 to 1.8e-8 (0 excluded)"]
    assert len(fig.data[0].x) == 7 and fig.data[0].x[3].startswith("no values from 1.8e-8 to ")
    assert figures.histogram_figure(np.arange(3), schema.hist_edges(), np.zeros((3, 97)), "h").layout.annotations


def _gradient_like_counts() -> np.ndarray:
    """Gradients between about 1e-4 and 1e-1 of either sign, one exact zero: the bins around +-1e-8 stay empty."""
    counts = np.zeros((4, schema.HIST_BINS))
    for side in (-1, 1):
        counts[:, schema.HIST_HALF + side * np.arange(17, 29)] = 50
    counts[2, schema.HIST_HALF] = 1
    return counts


def test_a_histogram_leaves_out_the_empty_bins_around_zero_and_its_ticks_are_true_bin_edges():
    edges = schema.hist_edges()
    fig = figures.histogram_figure(np.arange(4), edges, _gradient_like_counts(), "grad")
    names = list(fig.data[0].x)
    # each side: its 12 bins, a margin bin either side, a blank column; in the middle zero and its two margin bins
    assert len(names) == 2 * (12 + 2 + 1) + 3 and names.index("exactly 0") == len(names) // 2
    gaps = [n for n in names if n.startswith("no values")]
    assert gaps == ["no values from -5.6e-5 to -1.8e-8", "no values from 1.8e-8 to 5.6e-5"]  # 14 empty bins each
    held = {figures.edge_text(v) for v in figures.held_edges(edges)}
    labels = fig.layout.xaxis.ticktext
    assert set(labels) <= held and {"-1e-1", "-5.6e-5", "0", "1e-4", "1e-2", "1e-1"} <= set(labels), labels
    at = dict(zip(labels, fig.layout.xaxis.tickvals))
    assert at["0"] == names.index("exactly 0") and at["1e-4"] == names.index("5.6e-5 to 1e-4") + 0.5


def test_histogram_columns_keep_a_margin_and_fold_only_long_empty_stretches():
    used = np.zeros(20, dtype=bool)
    used[[3, 6, 15]] = True
    # 2..4 and 5..7 with their margins touch; 8..13 (6 bins) fold into one column; 14..16
    assert figures.histogram_columns(used) == [2, 3, 4, 5, 6, 7, (8, 13), 14, 15, 16]
    assert figures.histogram_columns(np.zeros(5, dtype=bool)) == []
    assert figures.histogram_columns([True]) == [0] and figures.histogram_columns([False, True]) == [0, 1]  # fewer
    #                                                                 bins than the margins' kernel: none past the last


def test_a_histogram_of_zeros_only_says_so_and_a_step_without_values_is_blank_not_zero():
    counts = np.zeros((3, schema.HIST_BINS))
    counts[:2, schema.HIST_HALF] = 7  # every value exactly 0; at the third step none at all (all NaN)
    fig = figures.histogram_figure(np.arange(3), schema.hist_edges(), counts, "grad histogram of fc1")
    assert "every value is exactly 0" in fig.layout.title.text
    zero = list(fig.data[0].x).index("exactly 0")
    assert fig.data[0].z[0][zero] > 0 and all(v is None for v in fig.data[0].z[2])  # a gap, not log10(1 + 0)
    assert fig.data[0].customdata[0][zero] == 7  # the hover gives the count itself
    assert "exactly 0" not in figures.histogram_figure(np.arange(4), schema.hist_edges(), _gradient_like_counts(),
                                                       "grad").layout.title.text


def test_durations_are_shown_in_ms_under_a_second_and_in_s_from_a_second_on():
    for name in ("step_time", "busy_time", "wait_time", "after_step_time", "cpu_wait_time", "tview_time",
                 "tview_writer_cpu"):
        assert figures.is_duration(name), name
    assert not any(figures.is_duration(n) for n in ("wall_time", "loss", "lr", "examples_per_sec"))
    assert figures.duration_unit([0.004, 0.008, 2.5]) == (1e3, "ms")  # the typical value: one slow step does not
    assert figures.duration_unit([1.2, 3.0]) == (1.0, "s")
    shown, unit = figures.in_units("busy_time", np.array([0.0082, np.nan]))
    assert unit == "ms" and shown[0] == pytest.approx(8.2) and np.isnan(shown[1])
    assert figures.in_units("loss", np.array([0.5]))[1] == ""
    clock, unit = figures.in_units("wall_time", np.array([[1.7e9 + 2, np.nan], [1.7e9, 1.7e9 + 5]]))  # the Ranks page's
    assert unit == "s from the first record" and np.allclose(clock, [[2, np.nan], [0, 5]], equal_nan=True)  # [r, s]
    assert [figures.duration_text(s) for s in (0.0082, 1.5, None)] == ["8.2 ms", "1.50 s", "-"]


def test_a_figure_of_durations_says_its_unit_on_the_axis_the_colour_bar_and_in_the_hover():
    steps, values = np.arange(5), np.full((2, 5), 8.2)
    lines = figures.ranks_figure(steps, [0, 1], values, "busy time", "busy_time", unit="ms")
    assert lines.layout.yaxis.title.text == "busy_time (ms)" and all("ms" in t.hovertemplate for t in lines.data)
    bands = figures.ranks_figure(steps, list(range(9)), np.full((9, 5), 8.2), "busy time", "busy_time", unit="ms")
    assert all(t.hovertemplate.count(" ms") == 1 for t in bands.data if t.hovertemplate)
    heat = figures.rank_heatmap_figure(steps, [0, 1], values, "busy time", "busy_time", unit="ms")
    assert heat.data[0].colorbar.title.text == "busy_time (ms)" and "busy_time (ms)" in heat.data[0].hovertemplate
    line = figures.line_figure([figures.Series("rank 0", steps, values[0])], "step_time", "step_time", unit="ms")
    assert line.layout.yaxis.title.text == "step_time (ms)" and line.data[0].hovertemplate.endswith(" ms")
    assert figures.line_figure([figures.Series("r", steps, values[0])], "loss", "loss").layout.yaxis.title.text == \
        "loss"


def test_network_positions_stack_layers_as_slabs():
    pos = layout.network_positions([4, 9])
    assert pos.shape == (13, 3)
    assert set(pos[:4, 2]) == {0.0} and set(pos[4:, 2]) == {3.0}
    assert np.allclose(pos[:4, :2].mean(axis=0), 0) and np.allclose(pos[4:, :2].mean(axis=0), 0)


def test_summaries_of_a_real_run(small_run):
    import tview
    run = tview.open_run(small_run[0])
    s = summaries.run_summary(run)
    assert s["steps"] == len(run.steps()) and s["ranks"][0]["state"] == "closed" and not s["live"]
    layers, values, at = summaries.channel_values_at(run, "act_channel_mean", None, 0)
    for layer, v, step in zip(layers, values, at):
        steps, ref = run.stat("act_channel_mean", layer)
        assert np.array_equal(v, ref[list(steps).index(step)])
    steps, t = summaries.summed_trajectory(run, 0)
    per_layer = [run.trajectory(layer) for layer in run.layers]
    per_layer = [(s, c) for s, c in per_layer if len(s)]  # layers with parameters
    assert all(np.array_equal(s, steps) for s, _ in per_layer) and len(steps) > 1
    assert np.allclose(t, np.sum([c for _, c in per_layer], axis=0))


def test_noise_scale_figure_shades_undefined_stretches_with_their_reason_and_draws_both_batch_sizes():
    from tview.diagnose import noise
    steps = np.arange(0, 200, 2)
    values = np.full(len(steps), 400.0)
    why = [""] * len(steps)
    for k in list(range(10, 20)) + [50]:
        values[k], why[k] = np.nan, noise.WHY_G2
    values[70], why[70] = np.nan, noise.WHY_NO_LOCAL
    spans = noise.NoiseScale(steps, values, why).undefined_spans()
    fig = figures.noise_scale_figure(steps, values, spans, "B_simple", batch=64.0, critical=400.0)
    json.dumps(fig.to_plotly_json(), cls=__import__("plotly").utils.PlotlyJSONEncoder)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [(19.0, 39.0), (99.0, 101.0), (139.0, 141.0)]  # a lone step: 1 wide
    assert rects[0].fillcolor == rects[1].fillcolor != rects[2].fillcolor  # one colour per reason
    legend = [t.name for t in fig.data]
    assert legend == ["B_simple", f"undefined: {noise.WHY_G2} (11 steps)", f"undefined: {noise.WHY_NO_LOCAL} (1 step)",
                      "batch size in use 64", "critical batch size 400"]
    assert list(fig.data[3].y) == [64.0, 64.0] and list(fig.data[4].x) == [0, 198]  # across every step
    assert fig.layout.yaxis.type == "log" and not fig.layout.annotations
    assert "every step" in figures.noise_scale_figure(steps, np.full(len(steps), np.nan), [(0, 198, "x")], "t")\
        .layout.annotations[-1].text


def test_a_layer_without_parameters_is_said_to_have_none_not_to_have_nothing_yet(tmp_path):
    import torch
    import torch.nn.functional as F

    import tview
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.PReLU(4), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10))
    with tview.Recorder(model, str(tmp_path / "r"), every=1) as rec:
        for _ in range(2):
            F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,))).backward()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    assert len(run.stat("grad_norm", "1")[0]) == 2  # the PReLU's weight has gradient statistics ...
    assert summaries.no_values_reason(run, "grad_norm", "1") is None  # ... and is not said to have none
    assert "2 holds no parameters of its own" in summaries.no_values_reason(run, "grad", "2")  # the ReLU
    assert "no weight statistics" in summaries.no_values_reason(run, "weight_norm", "2")
    assert summaries.no_values_reason(run, "grad", "0") is None
    assert summaries.no_values_reason(run, "act", "2") is None  # activations: a ReLU has them


def test_a_statistics_first_nan_step_is_found_per_tensor_and_marked(tmp_path):
    import torch
    import torch.nn.functional as F

    import tview
    from tests.conftest import TinyCNN, make_data
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    step = {"now": 0}

    def poison(module, inputs, output):  # conv2's output NaN from step 4
        return output * float("nan") if step["now"] >= 4 else output
    model.conv2.register_forward_hook(poison)
    with tview.Recorder(model, str(tmp_path / "r"), every=1) as rec:
        for s in range(6):
            step["now"] = s
            F.cross_entropy(model(x), y).backward()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    assert summaries.first_nonfinite_of(run, "act_mean", [0], "conv2") == (4, "conv2")
    assert summaries.first_nonfinite_of(run, "act_mean", [0])[0] == 4  # (the shared relu, called after conv2 too)
    assert summaries.first_nonfinite_of(run, "act", [0], "conv1") is None  # before the poisoned layer
    assert summaries.first_nonfinite_of(run, "grad", [0], "conv1") == (4, "conv1")  # its gradient, from behind
    fig = figures.mark_step(figures.heatmap_figure(np.arange(3), ["a"], np.ones((3, 1)), "t"), 4, "NaN from step 4")
    assert fig.layout.shapes[0].x0 == 4 and fig.layout.annotations[-1].text == "NaN from step 4"
    hist = figures.histogram_figure(np.arange(6), schema.hist_edges(), np.ones((6, schema.HIST_BINS)), "t")
    hist = figures.mark_step(hist, 4, "NaN from step 4", steps_down=True)
    assert hist.layout.shapes[0].y0 == 4 and hist.layout.annotations[-1].text == "NaN from step 4"
    json.loads(hist.to_json())


def test_channels_of_a_layer_whose_output_was_nan_are_blank_not_healthy(nan_conv2_run):
    import tview
    run = tview.open_run(nan_conv2_run)
    layers, values, at, bad = summaries.channel_values_shown(run, "act_channel_zero_frac", None, 0)
    assert "conv2" in bad and "conv1" not in bad
    shown = dict(zip(layers, values))
    assert np.isnan(shown["conv2"]).all() and np.isfinite(shown["conv1"]).all()


def test_channels_with_no_value_are_named_in_the_network_figures_legend():
    from tview.render import figures3d
    fig = figures3d.network_figure(["conv1", "relu1"], [np.array([0.1, np.nan]), np.array([0.5, 0.2])], "zero fraction",
                                   "zero fraction")
    assert [t.name for t in fig.data if t.showlegend] == ["no value (NaN/Inf, or not measured)"]
