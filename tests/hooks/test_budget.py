"""The cost budget: tview records one scheduled step in k (a power of two) so that its measured share of the
training time stays under the budget; ranks with different strides still meet on common steps."""

import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tview
from tests.hooks.test_user_setups import Sleeps, data, small_net
from tview.errors import ConfigError
from tview.hooks.budget import CostBudget, next_stride


def test_the_stride_rises_to_the_least_power_of_two_within_the_budget_and_falls_back():
    # measured 50% at stride 1: tview's record costs as much as a step; 10% needs a record in 9 steps: 16
    assert next_stride(1, 0.5, 0.1) == 16
    assert next_stride(16, 0.08, 0.1) == 16  # within: kept
    assert next_stride(16, 0.02, 0.1) == 8  # at 8 it would be about 4%: well within
    assert next_stride(2, 0.11, 0.1) == 4  # over at all: at least doubled
    assert next_stride(1, 5.0, 0.05) <= 1 << 16  # a writer's CPU beyond the wall time: bounded


def test_strides_of_powers_of_two_nest_so_ranks_meet_on_common_steps():
    slow, fast = CostBudget(0.05), CostBudget(0.05)
    slow.stride, fast.stride = 8, 2
    taken_slow = {n for n in range(200) if slow.take(n)}
    taken_fast = {n for n in range(200) if fast.take(n)}
    assert taken_slow == set(range(0, 200, 8)) and taken_slow <= taken_fast


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, float("nan"), "5%"])
def test_a_budget_that_is_not_a_share_is_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match="budget must be a share"):
        tview.Recorder(small_net(), str(tmp_path / "r"), budget=bad)


def train_for(model, opt, rec, seconds: float, x, y) -> int:
    t_end, steps = time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rec.step()
        steps += 1
    return steps


def test_a_budget_keeps_tviews_share_of_the_wall_time_under_it(tmp_path):
    """tview made 30 ms slower on every recorded step of a 5 ms training step, every step scheduled: about 85% of
    the time. With budget=0.1, the stride rises (said once), the steps recorded are those whose number is a
    multiple of the stride recorded with them, and once it has risen tview's 30 ms a record are at most about 10%
    of the wall time, measured here by the test's own clock."""
    model = nn.Sequential(small_net(), Sleeps(0.005))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, budget=0.1)
    param_results, slept = rec._param_results, []

    def slow_param_results(*args, **kwargs):
        time.sleep(0.03)
        slept.append(time.perf_counter())
        return param_results(*args, **kwargs)

    rec._param_results = slow_param_results
    x, y = data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_for(model, opt, rec, 2.5, x, y)  # the first window: every step, then the stride rises
        t0, before = time.perf_counter(), len(slept)
        train_for(model, opt, rec, 4.0, x, y)
        share = 0.03 * (len(slept) - before) / (time.perf_counter() - t0)
    rec.close()
    said = [str(w.message) for w in caught if "budget=0.1" in str(w.message)]
    assert len(said) == 1 and "over budget" in said[0], said
    assert share <= 0.13, share  # (the stride a power of two: at most the budget, the window's lag aside)
    run = tview.open_run(str(tmp_path / "r"))
    steps, stride = run.scalar("tview_stride")
    assert stride[0] == 1 and stride.max() >= 16, stride
    from tview.render import summaries  # the Overview's share: the budget's, not the first window's full rate
    assert summaries.tview_shares(summaries.compact(run.rank_summaries()))[0] <= 0.13
    assert np.all(steps % stride == 0), (steps, stride)
    assert len(steps) == len(slept) and np.all(np.diff(steps) >= 1)


def test_a_budget_tview_keeps_within_records_every_scheduled_step(tmp_path):
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = tview.Recorder(model, str(tmp_path / "r"), every=3, optimizer=opt, budget=0.9)
    steps = train_for(model, opt, rec, 2.5, *data())
    rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    recorded, stride = run.scalar("tview_stride")
    assert list(recorded) == list(range(0, steps, 3)) and np.all(stride == 1)
    assert run.manifest["budget"] == 0.9


def slowed(fn, seconds: float):
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)
    return slow


def test_ranks_at_different_strides_record_nested_steps_and_the_run_says_its_budget(tmp_path):
    """Two ranks' Recorders (rank= given, one process), tview 30 ms slower on rank 1's records only: rank 1's stride
    goes higher than rank 0's, and every step rank 1 recorded, rank 0 recorded too. `tview info` says the budget."""
    from tview.cli import info_text
    models = []
    for rank in (0, 1):
        torch.manual_seed(0)
        model = nn.Sequential(small_net(), Sleeps(0.005))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, budget=0.2, rank=rank,
                             world_size=2)
        if rank == 1:
            rec._param_results = slowed(rec._param_results, 0.03)
        models.append((model, opt, rec))
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(400):
            for model, opt, rec in models:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                rec.step()
    for *_, rec in models:
        rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    (steps0, stride0), (steps1, stride1) = (run.scalar("tview_stride", rank=r) for r in (0, 1))
    assert stride1.max() > stride0.max(), (stride0, stride1)
    assert set(steps1) <= set(steps0) and len(steps1) < len(steps0)
    assert "every(1) within a 20% budget" in info_text(str(tmp_path / "r"))
