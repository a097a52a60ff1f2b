"""The fault zoo's scenarios as tests, a few of each family: real DDP runs over gloo recorded with the default preset,
one injected fault each; diagnose's first finding must name it (kind, rank, layer, step within one recorded step)."""

import importlib.util
import os
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

import tview  # noqa: E402
from tests.conftest import REPO  # noqa: E402

pytestmark = pytest.mark.slow


def _faults():
    spec = importlib.util.spec_from_file_location("faults", os.path.join(REPO, "benchmarks", "faults.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["faults"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    from tview.demo import load_digits_tensors
    mod.DATA["digits"] = load_digits_tensors()
    return mod


@pytest.mark.parametrize("name", ["nan-input", "nan-gradient", pytest.param("dead-filter", marks=pytest.mark.alone),
                                  pytest.param("dead-units-sinking", marks=pytest.mark.alone),
                                  "replicas-differ", "lr-spike", "lr-spike-one-rank", "lr-ramp", "exploding-one-rank",
                                  "bad-batch-one-rank", "inf-loss-one-rank", "nan-momentum",
                                  pytest.param("zero-input-one-rank", marks=pytest.mark.alone),
                                  "labels-permuted-one-rank", "stuck-loader-one-rank", "same-batches-every-rank"])
# (dead-filter, dead-units-sinking: warnings, the only ones here: a slow rank made by the other test worker's load,
# also a warning, could come first; dead-units-sinking: each rank dates the units' death by its own batches, one
# finding for every rank all the same. exploding-one-rank, bad-batch-one-rank: the all-reduced gradient blows up on
# every rank, the finding names the rank whose own gradient made it; inf-loss-one-rank: the loss is the first NaN, not
# the gradients after it; nan-momentum: the weights the step wrote NaN date it, not the forward of the next step;
# lr-ramp: x1.05 a step, no single jump: lr_jump names the growth from the step it began, not where the gradients blow
# up; zero-input-one-rank: a warning too; the rank whose batches are all zero is named at the step they turned so, not
# when its loss has drifted far from the others'; labels-permuted-one-rank: one rank of 3 with its class mapping off
# by 3, its loss 1.3-2x the others', never the 2x the bad-labels rule wants; stuck-loader-one-rank: one rank of 3
# trains on one batch again and again: named at the first step of that batch by its layers' zeros, which stop
# changing from step to step, not when its loss has fallen below the others'; same-batches-every-rank: no
# DistributedSampler, every rank's loss the same at every step)
def test_fault_is_named_first(tmp_path, name):
    faults = _faults()
    sc = next(s for s in faults.SCENARIOS if s.name == name)
    out = str(tmp_path / name)
    faults.run_scenario(sc, out)
    with tview.open_run(out) as run:
        found = tview_diagnose(run)
    assert faults.correct(sc, found), f"expected {faults.expected_text(sc)}, found {faults.found_text(found)}"


def _diagnosed(faults, sc, tmp_path) -> list:
    """Scenario `sc` run (its ranks forked once the imports are warm) and diagnosed: the findings."""
    faults.warm_imports()
    out = str(tmp_path / sc.name)
    faults.run_scenario(sc, out)
    with tview.open_run(out) as run:
        return tview_diagnose(run)


def _straggler(faults, name: str, how: str, rank: int):
    return faults.Scenario(name, steps=90, fault=faults._f(how, 50, rank), expected=("slow_rank", rank, None))


@pytest.mark.alone  # the onset within one step: the other test worker's load once moved it to step 52 (load 5)
@pytest.mark.parametrize("how, rank", [("sleep_data", 1), ("sleep_after", 0), ("slow_tview", 1)])
def test_the_rank_the_others_wait_for_is_named_whether_slow_before_its_forward_or_after_its_step(tmp_path, how, rank):
    """Rank `rank` takes 30 ms more a step from step 50: a sleep before its forward (a slow data loader: its own busy
    time), after optimizer.step() (logging, checkpoints: time no hook of the model sees; the other rank waits for it
    in the next all-reduce), or in tview's own statistics at the end of its forward pass: only then does the finding
    say tview makes it slow (and point at tview_time)."""
    faults = _faults()
    sc = _straggler(faults, f"slow-{how}", how, rank)
    slow = [f for f in _diagnosed(faults, sc, tmp_path) if f.tensor == "time"]
    assert len(slow) == 1 and slow[0].rank == rank and abs(slow[0].step - 50) <= 1, slow  # (a short LeNet run has
    #                                                                 true dead units too: not this test's concern)
    blames_tview = "tview makes it slow" in slow[0].message
    assert blames_tview == (how == "slow_tview") and (slow[0].stat == "tview_time") == blames_tview, slow[0].message


@pytest.mark.alone  # timing: the other test worker's load must not make stalls of its own
def test_a_rank_that_stalls_on_every_fifth_step_is_named_with_how_often(tmp_path):
    """Rank 1 sleeps 60 ms before its forward on every 5th step from step 60 only (a loader that refills now and
    then): the median of its own time stays level, but the others wait for it a large share of the job's time: it
    is named from its first stall, and how often it stalls is said."""
    faults = _faults()
    sc = next(s for s in faults.SCENARIOS if s.name == "straggler-every-5th")
    found = _diagnosed(faults, sc, tmp_path)
    slow = [f for f in found if f.tensor == "time"]
    assert faults.correct(sc, found) and len(slow) == 1, [f.message for f in found]
    assert "(every 5 steps)" in slow[0].message, slow[0].message  # (its share, 1 in 4 or 5: load adds slow steps)


@pytest.mark.alone  # rank 0's core must be free of other tests' work
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs: one rank alone, one with another process")
def test_a_rank_slowed_by_another_process_on_its_core_is_not_named(tmp_path):
    """Rank 1 shares its CPU with a busy process: the others wait for it, but its lead is its wait for a CPU
    (cpu_wait_time), the host's doing: no finding. Its own time shows the lead that would otherwise be named."""
    out = _scenario_run(tmp_path, "clean-busy-host")
    from tview.diagnose.checks import ranks
    with tview.open_run(out) as run:
        assert tview_diagnose(run) == []
        _, _, steps, _, own = ranks.own_time(run)
        waited = ranks.waited_share(own, None, ranks.median_step_time(run, steps))
    assert np.median(waited[1, 1:]) > ranks.SLOW_SHARE


def test_every_rank_logging_the_all_reduced_loss_is_not_the_same_batches(tmp_path):
    """3 ranks with batches of their own, each passing the mean loss over the ranks to rec.step() (as scripts that log
    an all-reduced loss do): every rank's logged loss is the same at every step, yet their layers' zero fractions
    differ, so ranks_same_data is not said (it was, before the zero fractions were asked), and nothing else is."""
    out = _scenario_run(tmp_path, "clean-reduced-loss")
    with tview.open_run(out) as run:
        losses = [run.scalar("loss", rank=r)[1] for r in run.ranks]
        assert all(np.array_equal(losses[0], other) for other in losses[1:])  # the same numbers on every rank
        assert tview_diagnose(run) == []


def _scenario_run(tmp_path, name: str) -> str:
    """The zoo's scenario `name` run (its ranks forked once the imports are warm) into tmp_path: its folder."""
    faults = _faults()
    faults.warm_imports()
    sc = next(s for s in faults.SCENARIOS if s.name == name)
    out = str(tmp_path / sc.name)
    faults.run_scenario(sc, out)
    return out


def tview_diagnose(run):
    from tview.diagnose import diagnose
    return diagnose(run)
