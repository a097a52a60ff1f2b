"""Views across many ranks without a browser: quantile bands, standout ranks, worst-first paging, focus parsing,
step alignment, and the figures drawn from them at 2 and at 1024 ranks."""

import json

import numpy as np
import pytest

from tview.render import figures, ranks_view


def test_quantile_bands_ignore_nan_and_say_nan_where_no_rank_has_a_value():
    v = np.array([[0.0, 1.0, np.nan], [10.0, np.inf, np.nan], [5.0, 3.0, np.nan]])
    b = ranks_view.quantile_bands(v)
    assert list(b) == ["min", "5%", "median", "95%", "max"]
    assert b["min"][0] == 0 and b["max"][0] == 10 and b["median"][0] == 5
    assert b["min"][1] == 1 and b["max"][1] == 3  # Inf is not a value of the band
    assert all(np.isnan(b[k][2]) for k in b)
    ref = np.percentile(np.arange(101.0)[:, None], [5, 95], axis=0)
    b = ranks_view.quantile_bands(np.arange(101.0)[:, None])
    assert b["5%"][0] == ref[0, 0] and b["95%"][0] == ref[1, 0]
    with pytest.raises(ValueError, match="ranks, steps"):
        ranks_view.quantile_bands(np.zeros(3))


def test_most_divergent_rank_among_1024_and_none_among_2():
    rng = np.random.default_rng(0)
    v = 1 + 0.01 * rng.normal(size=(1024, 200))
    v[613] += 0.2  # one rank drifts away
    scores = ranks_view.divergence(v)
    assert int(np.nanargmax(scores)) == 613
    assert ranks_view.standouts(list(range(1024)), v) == {613: ["most divergent"]}
    # two ranks: neither is "the divergent one"; the slowest still is named
    assert np.isnan(ranks_view.divergence(v[:2])).all()
    assert ranks_view.standouts([0, 1], v[:2], step_time={0: 0.01, 1: 0.02}) == {1: ["slowest"]}


def test_standouts_slowest_and_first_nan_may_share_a_rank():
    named = ranks_view.standouts([3, 4, 5], None, step_time={3: 0.1, 4: 0.3, 5: None},
                                 first_bad={3: None, 4: 17, 5: 40})
    assert named == {4: ["slowest", "first NaN"]}
    assert ranks_view.standout_label(4, named[4]) == "rank 4 (slowest, first NaN)"
    assert ranks_view.standouts([0], None, step_time={0: 1.0}) == {}  # one rank is slowest of nothing


def test_at_one_first_nan_step_the_rank_whose_activations_went_first_is_named():
    """Under DDP a NaN born in rank 1's forward reaches rank 0's gradients in the same step's all-reduce."""
    from tview.store.rank_summary import first_nonfinite_key
    born = {"layers": {"conv2": 240}, "scalars": {"loss": 240}, "tensors": {"activation": {"conv2": 240}}}
    reached = {"layers": {"fc": 240}, "scalars": {}, "tensors": {"gradient": {"fc": 240}, "weight": {"fc": 241}}}
    keys = {0: first_nonfinite_key(reached), 1: first_nonfinite_key(born)}
    assert keys == {0: (240, 3), 1: (240, 0)} and first_nonfinite_key({"layers": {}, "scalars": {}}) is None
    assert ranks_view.standouts([0, 1], None, first_bad=keys) == {1: ["first NaN"]}
    rows = [_row(0, first_nan=240) | {"first_nan_key": keys[0]}, _row(1, first_nan=240) | {"first_nan_key": keys[1]}]
    assert [r["rank"] for r in ranks_view.worst_first(rows)] == [1, 0]


def _row(rank, state="closed", last_step=99, first_nan=None, step_time=0.05, dropped=0):
    return {"rank": rank, "state": state, "last_step": last_step, "first_nan": first_nan, "step_time": step_time,
            "dropped": dropped}


def test_worst_first_then_paged():
    rows = [_row(r) for r in range(40)]
    rows[7]["step_time"] = 0.5                       # slow
    rows[30] = _row(30, state="stopped", last_step=50)
    rows[12] = _row(12, state="unreadable", last_step=None, step_time=None)
    rows[21]["first_nan"] = 80
    rows[22]["first_nan"] = 60                        # NaN earlier: worse
    rows[3]["last_step"] = 90                         # lags
    order = [r["rank"] for r in ranks_view.worst_first(rows)]
    assert order[:6] == [12, 30, 22, 21, 3, 7]
    assert order[6:] == sorted(order[6:])             # the healthy rest by rank
    page, shown = ranks_view.page_of(ranks_view.worst_first(rows), 5, size=16)
    assert shown == 2 and len(page) == 40 - 32        # asked past the end: the last page
    assert ranks_view.page_count(40, 16) == 3 and ranks_view.page_count(0, 16) == 1
    assert ranks_view.page_with_rank(ranks_view.worst_first(rows), 39, size=16) == 2
    assert ranks_view.page_with_rank(rows, 99) is None


@pytest.mark.parametrize("text,ranks,want", [("7", None, 7), (7, None, 7), (" 12 ", [12], 12), (3.0, None, 3),
                                             ("", None, None), (None, None, None), ("x", None, None),
                                             (2.5, None, None), (-1, None, None), (9, [0, 1], None),
                                             (True, None, None)])
def test_parse_rank(text, ranks, want):
    assert ranks_view.parse_rank(text, ranks) == want


def test_rank_from_query():
    assert ranks_view.rank_from_query("?runs=a,b&rank=63") == 63
    assert ranks_view.rank_from_query("?runs=a") is None
    assert ranks_view.rank_from_query("?rank=../../etc") is None


def test_align_to_grid_keeps_each_ranks_value_at_or_before_each_grid_step():
    a = (np.array([0, 10, 20, 30]), np.array([1.0, 2.0, 3.0, 4.0]))
    b = (np.array([0, 10, 20]), np.array([5.0, 6.0, 7.0]))      # a live rank one step behind
    c = (np.array([1, 11, 21, 31]), np.array([8.0, 9.0, 10.0, 11.0]))  # strided differently
    d = (np.zeros(0, dtype=np.int64), np.zeros(0))
    steps, v = ranks_view.align_to_grid([a, b, c, d])
    assert list(steps) == [1, 11, 21, 31]  # the rank that reached furthest sets the grid
    assert list(v[0]) == [1.0, 2.0, 3.0, 4.0] and list(v[2]) == [8.0, 9.0, 10.0, 11.0]
    assert list(v[1][:3]) == [5.0, 6.0, 7.0] and np.isnan(v[1][3])  # no value near step 31
    assert np.isnan(v[3]).all()
    steps, v = ranks_view.align_to_grid([])
    assert steps.shape == (0,) and v.shape == (0, 0)


def test_align_to_grid_holds_a_sparser_ranks_value_until_its_next_record_and_ends_it_after_its_last():
    every = (np.arange(0, 40), np.arange(40.0))
    eighth = (np.array([0, 8, 16]), np.array([1.0, 2.0, 3.0]))  # a budget's stride 8; stopped after step 16
    steps, v = ranks_view.align_to_grid([every, eighth])
    assert list(v[1][:24]) == [1.0] * 8 + [2.0] * 8 + [3.0] * 8  # held to its next record, and one interval after
    assert np.isnan(v[1][24:]).all()  # then nothing: a rank that stopped still shows as stopped


def test_ranks_figure_draws_bands_and_named_lines_at_1024_ranks_and_plain_lines_at_2():
    rng = np.random.default_rng(1)
    steps = np.arange(300)
    v = rng.normal(size=(1024, 300))
    fig = figures.ranks_figure(steps, list(range(1024)), v, "loss across ranks", "loss",
                               named={1023: "rank 1023 (slowest)"}, focus=5)
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == ["min-max of ranks", "5%-95% of ranks", "median rank", "rank 5", "rank 1023 (slowest)"]
    assert len(fig.data) < 10                       # not one line per rank
    assert len(fig.to_json()) < 200_000             # 1024 ranks cost what 7 lines cost
    small = figures.ranks_figure(steps, [0, 1], v[:2], "loss per rank", named={1: "rank 1 (slowest)"})
    assert [t.name for t in small.data] == ["rank 0", "rank 1 (slowest)"]  # no band of two ranks
    assert figures.ranks_figure(steps, [0, 1], np.full((2, 300), np.nan), "x").layout.annotations
    gone = figures.ranks_figure(steps, [0, 1], v[:2], "loss per rank", named={7: "rank 7 (slowest)"})
    assert [t.name for t in gone.data] == ["rank 0", "rank 1"]  # a standout no longer readable is not drawn


def test_rank_heatmap_stays_small_and_marks_the_focused_rank():
    v = np.random.default_rng(2).uniform(size=(1024, 1000))
    v[7, :10] = np.nan
    fig = figures.rank_heatmap_figure(np.arange(1000), list(range(1024)), v, "grad_norm", focus=7)
    heat = fig.data[0]
    assert heat.z.shape[0] == 1024 and heat.z.shape[0] * heat.z.shape[1] <= figures.HEATMAP_CELLS
    assert list(heat.y[:3]) == [0, 1, 2] and fig.layout.shapes[0].y0 == 6.5
    text = fig.to_json()
    assert len(text) < 2_000_000 and "bdata" in json.loads(text)["data"][0]["z"]  # typed array: NaN is a bit pattern
    two = figures.rank_heatmap_figure(np.arange(5), [0, 1], np.ones((2, 5)), "x")
    assert two.data[0].z.shape == (2, 5) and not two.layout.shapes
    assert list(two.layout.yaxis.tickvals) == [0, 1]  # no tick at rank 0.5


def test_no_rank_is_named_among_ranks_that_differ_only_by_noise():
    v = 1 + 0.01 * np.random.default_rng(3).normal(size=(64, 500))
    assert ranks_view.most_divergent(v) is None
    assert ranks_view.slowest({0: 0.100, 1: 0.101, 2: 0.100}) is None
    assert ranks_view.slowest({0: 0.1, 1: 0.3}) == 1


def test_under_ddp_the_straggler_is_named_by_the_duration_in_which_it_stands_out():
    equal = {r: 0.055 for r in range(8)}  # the all-reduce makes every step as long as the slowest rank's
    data = {r: 0.0001 for r in range(8)} | {5: 0.030}
    assert ranks_view.slowest_by(equal, {"compute_time": {r: 0.0014 for r in range(8)}, "data_time": data}) == \
        (5, "slowest by data_time")
    assert ranks_view.standouts(list(range(8)), step_time=equal, other_times={"data_time": data}) == \
        {5: ["slowest by data_time"]}
    assert ranks_view.slowest_by(equal | {2: 0.2}, {"data_time": data}) == (2, "slowest")
    # two ranks, rank 0 slow in its data loading: rank 1 waits for it in the all-reduce; the waiting rank is
    # the fast one, never named slow
    two = {0: 0.055, 1: 0.055}
    assert ranks_view.slowest_by(two, {"wait_time": {0: 0.0002, 1: 0.030}}) is None
    assert ranks_view.slowest_by(two, {"wait_time": {0: 0.0002, 1: 0.030}, "data_time": {0: 0.03, 1: 0.0001}}) == \
        (0, "slowest by data_time")
