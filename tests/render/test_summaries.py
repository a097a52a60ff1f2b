"""The overview's and the Ranks page's numbers from the rank summaries (tview.render.summaries): trends across
ranks on one grid, medians, the ranks table and the standouts, on made-up summaries with known answers and on a
real synthetic run against the same numbers read from its shards."""

import numpy as np

from tview.render import figures, summaries
from tview.store.reader import open_run


def _summary(rank: int, steps, loss, step_time, first_nan=None, data_time=None, closed=True) -> dict:
    trend = {"stride": 1, "step": list(steps), "wall_time": [100.0 + s for s in steps], "loss": list(loss),
             "step_time": list(step_time)}
    if data_time is not None:
        trend["data_time"] = list(data_time)
    return {"rank": rank, "steps": len(steps), "first_step": steps[0], "last_step": steps[-1], "first_wall": 100.0,
            "last_wall": 100.0 + steps[-1], "closed": closed, "dropped": 0, "problem": None, "trend": trend,
            "first_nonfinite": {"layers": {}, "scalars": {} if first_nan is None else {"loss": first_nan},
                                "tensors": {}}}


def _missing(rank: int) -> dict:
    return {"rank": rank, "steps": 0, "last_step": None, "closed": False, "dropped": 0, "first_wall": None,
            "last_wall": None, "first_nonfinite": None, "trend": None, "problem": "missing"}


def test_trend_across_ranks_aligns_ranks_and_leaves_nan_where_a_rank_has_nothing():
    s = summaries.compact({0: _summary(0, [0, 2, 4, 6], [4, 3, 2, 1], [1, 1, 1, 1]),
                           1: _summary(1, [0, 2], [5, float("nan")], [1, 1]),  # behind; a NaN loss point
                           2: _missing(2)})
    assert isinstance(s[0]["trend"]["loss"], np.ndarray) and s[2]["trend"] is None
    steps, values = summaries.trend_across_ranks(s, "loss", [0, 1, 2])
    assert steps.tolist() == [0, 2, 4, 6]
    np.testing.assert_array_equal(values[0], [4, 3, 2, 1])
    np.testing.assert_array_equal(values[1], [5, np.nan, np.nan, np.nan])  # NaN point left out, then behind
    assert np.isnan(values[2]).all()
    assert summaries.trend_names(s) == ["loss", "step_time"]
    empty_steps, empty = summaries.trend_across_ranks(s, "grad_norm", [0, 1])
    assert len(empty_steps) == 0 and empty.shape == (2, 0)


def test_summary_table_is_worst_first_with_median_step_time_and_the_exact_first_nan():
    s = summaries.compact({
        0: _summary(0, [0, 1, 2], [1, 1, 1], [0.1, 0.1, 0.1]),
        1: _summary(1, [0, 1, 2], [1, 1, 1], [0.1, 0.3, 0.2], first_nan=17),
        2: _summary(2, [0, 1, 2], [1, 1, 1], [0.1, 0.1, 0.1]),
        3: _missing(3)})
    rows = [{"rank": r, "steps": x["steps"], "last_step": x["last_step"], "dropped": 0, "problem": x["problem"],
             "wall_seconds": None, "state": "unreadable" if x["problem"] else "closed"} for r, x in s.items()]
    table = summaries.summary_table(rows, s)
    assert [r["rank"] for r in table] == [3, 1, 0, 2]  # unreadable, then the NaN, then by rank
    by_rank = {r["rank"]: r for r in table}
    assert by_rank[1]["step_time"] == 0.2 and by_rank[1]["first_nan"] == 17
    assert by_rank[0]["first_nan"] is None and by_rank[3]["step_time"] is None


def test_standouts_from_summaries_name_the_slowest_by_a_duration_and_the_first_nan():
    flat = [0.1] * 4
    s = summaries.compact({r: _summary(r, [0, 1, 2, 3], [1, 1, 1, 1], flat, data_time=[0.5 if r == 2 else 0.01] * 4,
                                       first_nan=9 if r == 3 else None) for r in range(4)})
    rows = summaries.rank_rows(None, s)
    table = summaries.summary_table(rows, s)
    assert summaries.other_trend_times(s) == {"data_time": {0: 0.01, 1: 0.01, 2: 0.5, 3: 0.01}}
    named = summaries.summary_standouts([0, 1, 2, 3], table, s)
    assert named == {2: ["slowest by data_time"], 3: ["first NaN"]}


def test_tviews_share_is_its_time_per_record_over_the_time_between_records():
    """A record every 20 ms of wall time, tview_time 2 ms a record: 10%; a trend that keeps every 2nd record (stride 2,
    40 ms between its points) gives the same; a run without tview_time has no share."""
    every_20ms = _summary(0, [0, 2, 4, 6], [1] * 4, [0.01] * 4)
    every_20ms["trend"].update(wall_time=[100 + 0.02 * i for i in range(4)], tview_time=[0.002] * 4)
    strided = _summary(1, [0, 4, 8, 12], [1] * 4, [0.01] * 4)
    strided["trend"].update(stride=2, wall_time=[100 + 0.04 * i for i in range(4)], tview_time=[0.002] * 4)
    s = summaries.compact({0: every_20ms, 1: strided, 2: _summary(2, [0, 2], [1, 1], [0.01, 0.01]), 3: _missing(3)})
    shares = summaries.tview_shares(s)
    assert abs(shares[0] - 0.1) < 1e-9 and abs(shares[1] - 0.1) < 1e-9 and shares[2] is None and shares[3] is None
    rows = summaries.rank_rows(None, s)
    assert {r["rank"]: r["tview_share"] for r in summaries.summary_table(rows, s)} == shares


def test_a_real_runs_summaries_agree_with_its_shards(tmp_path):
    from tview.store.synthetic import write_synthetic_run
    path = write_synthetic_run(str(tmp_path / "run"), 200, ranks=4, layers=3, detail_every=50, channel_tail=10)
    with open_run(path) as run:
        s = summaries.compact(run.rank_summaries())
        table = summaries.summary_table(summaries.rank_rows(run, s), s)
        from_shards = {r["rank"]: r for r in summaries.ranks_table(run, max_points=None)}
        for row in table:
            assert row["first_nan"] == from_shards[row["rank"]]["first_nan"]
            assert abs(row["step_time"] / from_shards[row["rank"]]["step_time"] - 1) < 0.05
        steps, loss = summaries.trend_across_ranks(s, "loss", run.ranks)
        full_steps, full = summaries.scalar_across_ranks(run, "loss", None)
        at = np.searchsorted(full_steps, steps)
        np.testing.assert_allclose(loss, full[:, at], rtol=1e-6)  # every k-th step, to 7 digits
        steps, norm = summaries.trend_across_ranks(s, "grad_norm", run.ranks)
        w_steps, whole = summaries.stat_across_ranks(run, "grad_norm", None, None)
        np.testing.assert_allclose(norm, whole[:, np.searchsorted(w_steps, steps)], rtol=1e-5)


def test_warm_up_builds_the_figures_without_error():
    figures.warm_up()


def test_the_first_nan_loss_step_comes_from_the_summaries_exactly(nan_conv2_run, small_run):
    with open_run(nan_conv2_run) as run:
        assert summaries.first_scalar_nonfinite(run.rank_summaries(), "loss") == (0, 0)
    with open_run(small_run[0]) as clean:
        assert summaries.first_scalar_nonfinite(clean.rank_summaries(), "loss") is None


def test_a_snapshot_all_nan_is_said_to_be_so_and_one_with_a_finite_value_is_drawn():
    w = np.full((6, 1, 5, 5), np.nan)
    text = summaries.nonfinite_snapshot_text(w, "the weights of conv1", 580, first=240)
    assert text == ("the weights of conv1 are all NaN/Inf at step 580 (NaN/Inf from step 240 on): nothing to draw; "
                    "pick an earlier step")
    w[0, 0, 0, 0] = 0.1
    assert summaries.nonfinite_snapshot_text(w, "the weights of conv1", 580) is None
