"""Rank summaries: the sidecar each writer keeps equals what the shard holds, stays bounded, and is never trusted
when it is stale or damaged."""

import json
import os
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

import tview
from tests.conftest import TinyCNN, make_data, train
from tview.store import rank_summary
from tview.store.health import first_nonfinite, shard_summary
from tview.store.rank_summary import RankSummary

STEPS = 300


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A 300-step TinyCNN run recorded every step, with a NaN loss injected at step 250."""
    path = str(tmp_path_factory.mktemp("summary") / "run")
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tview.Recorder(model, path, every=1, queue_size=1024) as rec:  # no step dropped however slow the disk
        train(model, rec, 250, x, y, opt=opt)
        rec.step(loss=float("nan"))
        train(model, rec, STEPS - 251, x, y, opt=opt)
    return path


def test_summary_holds_what_the_shard_holds(recorded):
    run = tview.open_run(recorded)
    with open(os.path.join(recorded, "rank-00000.summary.json")) as f:
        on_disk = json.load(f)
    s = run.rank_summaries()[0]
    assert s["problem"] is None and s["closed"] is True and s["steps"] == STEPS
    assert s["shard_stamp"] == on_disk["shard_stamp"]  # read from the sidecar, not recomputed
    assert (s["first_step"], s["last_step"]) == (0, STEPS - 1)
    assert s["first_nonfinite"] == run.first_nonfinite(0) and s["first_nonfinite"]["scalars"] == {"loss": 250}
    trend = s["trend"]
    k = trend["stride"]
    assert k == 4 and trend["step"] == list(range(0, STEPS, k))  # 75 points: between 64 and 127
    steps, loss = run.scalar("loss")
    np.testing.assert_allclose(trend["loss"], loss[::k], rtol=1e-6)
    grad_steps, norms = run.stat_matrix("grad_norm")  # none at step 250 (no backward pass: no gradients of its own)
    whole = dict(zip(grad_steps.tolist(), np.sqrt((norms.filled(0).astype(np.float64) ** 2).sum(1))))
    assert 250 not in whole and len(whole) == STEPS - 1
    np.testing.assert_allclose(trend["grad_norm"], [whole.get(s, np.nan) for s in trend["step"]], rtol=1e-6)
    _, sums = run.stat_matrix("weight_sum")
    np.testing.assert_array_equal(trend["weight_sum"], sums.filled(0).sum(1)[::k])  # exact: a replica fingerprint
    _, step_time = run.scalar("step_time")
    np.testing.assert_allclose(trend["step_time"], step_time[::k], rtol=1e-6)


def test_the_shard_gives_the_same_summary_when_the_sidecar_is_gone(recorded):
    run = tview.open_run(recorded)
    written = run.rank_summaries()[0]
    computed = shard_summary(run.shard(0), run.scalar_names(0), first_nonfinite(run.shard(0), run.layers))
    assert computed["trend"] == written["trend"]
    unstamped = {"written_unix": None, "shard_stamp": None}
    assert replace(RankSummary.from_dict(computed), **unstamped) == replace(written, **unstamped)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_rank", "stale", "series_short", "word_in_series"])
def test_a_damaged_or_stale_sidecar_is_not_trusted(recorded, tmp_path, damage):
    import shutil
    path = str(tmp_path / "copy")
    shutil.copytree(recorded, path)
    side = os.path.join(path, "rank-00000.summary.json")
    text = open(side).read()
    if damage == "garbage":
        open(side, "wb").write(os.urandom(300))
    elif damage == "truncated":
        open(side, "w").write(text[: len(text) // 2])
    elif damage == "other_rank":
        open(side, "w").write(text.replace('"rank":0', '"rank":3'))
    elif damage in ("series_short", "word_in_series"):  # one series a point short, or a word among its numbers
        start = text.index('"loss":[') + len('"loss":[')
        cut = text.index(",", start) + 1
        open(side, "w").write(text[:start] + ("" if damage == "series_short" else "oops,") + text[cut:])
    else:  # the shard changed after its summary was written: what a writer killed between the two leaves
        with h5py.File(os.path.join(path, "rank-00000.h5"), "r+") as f:
            f["status/closed"][0] = 0
        os.utime(os.path.join(path, "rank-00000.h5"), ns=(1, 1))  # a new stamp even within one clock tick
    s = tview.open_run(path).rank_summaries()[0]
    assert s["problem"] is None and s["steps"] == STEPS and s["closed"] is (damage != "stale")
    assert len(s["trend"]["step"]) == 75


def test_a_trend_stays_bounded_and_evenly_strided():
    trend = rank_summary.Trend()
    rng = np.random.default_rng(0)
    total = 0
    for size in rng.integers(1, 5000, 200):
        steps = np.arange(total, total + size) * 3
        trend.extend(steps, steps * 0.1, {"loss": steps * 2.0})
        total += size
        k = trend.stride
        assert rank_summary.TREND_POINTS <= len(trend.step) <= 2 * rank_summary.TREND_POINTS - 1 or total < 64
        np.testing.assert_array_equal(trend.step, np.arange(0, total, k) * 3)
        np.testing.assert_array_equal(trend.series["loss"], trend.step * 2.0)
    assert k & (k - 1) == 0 and k == rank_summary.stride_for(total)


def test_a_scalar_first_passed_late_holds_nan_before(tmp_path):
    trend = rank_summary.Trend()
    trend.extend([0, 1, 2], [0, 0, 0], {"loss": [1.0, 2.0, 3.0]})
    trend.extend([3, 4], [0, 0], {"loss": [4.0, 5.0], "data_time": [0.5, 0.6]})
    assert np.isnan(trend.series["data_time"][:3]).all() and list(trend.series["data_time"][3:]) == [0.5, 0.6]
    steps, values = rank_summary.trend_arrays({"trend": trend.as_json()}, "data_time")
    assert list(steps) == [3, 4] and list(values) == [0.5, 0.6]


def test_a_resumed_run_continues_its_trend(tmp_path):
    path = str(tmp_path / "r")
    x, y = make_data()
    model = TinyCNN()
    with tview.Recorder(model, path, every=1, queue_size=1024) as rec:  # (exact step counts: none dropped)
        train(model, rec, 130, x, y)
    with tview.Recorder(model, path, every=1, mode="resume", queue_size=1024) as rec:
        train(model, rec, 70, x, y)
    run = tview.open_run(path)
    s = run.rank_summaries()[0]
    assert s["steps"] == 200 and s["last_step"] == 199 and s["trend"]["stride"] == 2
    assert s["trend"]["step"] == list(range(0, 200, 2))
    _, loss = run.scalar("loss")
    np.testing.assert_allclose(s["trend"]["loss"], loss[::2], rtol=1e-6)


def test_an_open_run_sees_a_summary_rewritten_by_a_live_writer(tmp_path):
    path = str(tmp_path / "r")
    x, y = make_data()
    model = TinyCNN()
    rec = tview.Recorder(model, path, every=1)
    train(model, rec, 5, x, y)
    rec.flush()
    run = tview.open_run(path)
    assert run.rank_summaries()[0]["steps"] == 5 and run.rank_summaries()[0]["closed"] is False
    train(model, rec, 7, x, y)
    rec.close()
    s = run.rank_summaries()[0]
    assert s["steps"] == 12 and s["last_step"] == 11 and s["closed"] is True


def test_summaries_are_typed_and_say_where_nan_first_appeared(recorded, tmp_path):
    from tview.store.synthetic import write_synthetic_run
    s = tview.open_run(recorded).rank_summaries()[0]
    assert isinstance(s, RankSummary) and s.first_nonfinite_step() == 250 and s.closed and s.problem is None
    assert s.wall_seconds == s.last_wall - s.first_wall > 0
    path = write_synthetic_run(str(tmp_path / "two"), 10, ranks=2, layers=2, channels=2, channel_tail=2)
    os.remove(os.path.join(path, "rank-00001.h5"))
    with tview.open_run(path, skip_bad_shards=True) as run:
        clean, missing = run.rank_summaries()[0], run.rank_summaries()[1]
    assert clean.first_nonfinite_step() is None and clean.steps == 10 and clean.problem is None
    assert missing.problem and "no shard yet" in missing.problem and missing.trend is None
    assert missing.first_nonfinite_step() is None and missing.steps == 0


def test_the_nan_onset_is_the_earliest_of_layers_and_scalars():
    where = {"layers": {"conv1": 12, "fc": 9}, "scalars": {"loss": 10}, "tensors": {}}
    assert RankSummary(rank=0, first_nonfinite=where).first_nonfinite_step() == 9
    assert RankSummary(rank=0, first_nonfinite={"layers": {}, "scalars": {"loss": 3}}).first_nonfinite_step() == 3
    assert RankSummary(rank=0, first_nonfinite={"layers": {}, "scalars": {}}).first_nonfinite_step() is None
    s = RankSummary.from_dict({"rank": 4, "steps": 7, "tview_summary_version": 1})  # a summary file's keys
    assert (s.rank, s.steps, s.problem, s["steps"], s.get("nope", 1)) == (4, 7, None, 7, 1)



@pytest.mark.parametrize("trend, lazy", [  # lazy: the series parsed on use; else the whole text at once
    ({"stride": 2, "step": [0, 2, 4], "loss": [1.5, float("nan"), -float("inf")], "x_time": [1e-300, -2e10, 0]}, True),
    ({"stride": 2, "step": [0, 2], "loss": [1.5, 2.0], "a}b_time": [1.0, 2.0]}, False),
    ({"stride": 1, "step": [0], 'q"uo\\te_time': [-float("inf")], "é_time": [3.0]}, False),
    ({"stride": 1, "step": []}, True),
    ({}, False),
])
@pytest.mark.parametrize("tensors", [{}, {"trend": {"conv1": 4}}])  # another key named trend: parsed whole
def test_a_summary_read_with_its_trend_parsed_on_use_equals_its_whole_json(trend, lazy, tensors):
    from tview.store import summary_text
    summary = {"rank": 0, "first_nonfinite": {"scalars": {"trend": 3}, "tensors": tensors},
               "trend": trend, "shard_stamp": [1, 2]}
    text = json.dumps(summary, separators=(",", ":"))
    got = summary_text.loads(text)
    expected = json.loads(text)
    assert got.keys() == expected.keys() and got["first_nonfinite"] == expected["first_nonfinite"]
    assert list(got["trend"]) == list(expected["trend"])
    for name in expected["trend"]:
        assert name in got["trend"]
        np.testing.assert_array_equal(got["trend"][name], expected["trend"][name])
    assert summary_text.series_lengths(got["trend"]) == summary_text.series_lengths(expected["trend"])
    assert isinstance(got["trend"], summary_text.LazyTrend) is (lazy and not tensors)
