"""`tview demo` says how far it is: one line from rank 0 about every 10% of the steps."""

import re

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("torch")

from tview.demo import progress_steps, run_demo  # noqa: E402


def test_demo_reports_progress_every_tenth(tmp_path, capsys):
    run_demo(str(tmp_path / "demo"), ranks=1, steps=30)  # what `tview demo --ranks 1 --steps 30` runs
    lines = re.findall(r"step (\d+)/30 \((\d+)%\)  loss [0-9.]+", capsys.readouterr().out)
    assert [int(s) for s, _ in lines] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert [int(p) for _, p in lines] == list(range(10, 101, 10))


def test_progress_steps_for_short_and_long_runs():
    assert progress_steps(5) == {1, 2, 3, 4, 5}  # fewer steps than reports: each step once
    assert progress_steps(1500) == set(range(150, 1501, 150))


def test_learning_rate_warms_up_then_falls_to_zero():
    from tview.demo import lr_factor
    f = [lr_factor(s, 1000) for s in range(1000)]
    assert f[0] < 0.05 and max(f) == f[int(np.argmax(f))] and 45 <= int(np.argmax(f)) <= 55
    assert all(a >= b for a, b in zip(f[60:], f[61:])) and f[-1] < 1e-4


def test_an_unknown_fault_is_refused_before_any_rank_starts(tmp_path):
    with pytest.raises(ValueError, match="unknown fault 'boom'"):
        run_demo(str(tmp_path / "demo"), ranks=2, steps=10, fault="boom")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["nan", "straggler", "dead"])
def test_each_fault_shows_in_the_recorded_run_from_its_step(tmp_path, fault):
    import tview
    from tview.demo import FAULT_AT, STRAGGLE_SECONDS
    steps = 40
    at = int(FAULT_AT * steps)
    path = str(tmp_path / fault)
    run_demo(path, ranks=2, steps=steps, every=1, snapshot_every=20, batch=16, fault=fault)
    run = tview.open_run(path)
    if fault == "nan":  # rank 1's own loss first, then every rank's through the all-reduced gradient
        loss = {r: dict(zip(*run.scalar("loss", r))) for r in (0, 1)}
        assert np.isnan(loss[1][at]) and np.isfinite(loss[0][at]) and np.isfinite(loss[1][at - 1])
        assert np.isnan(loss[0][at + 1]) and np.isnan(loss[1][steps - 1])
    elif fault == "straggler":  # only rank 1's own busy time holds the sleep (DDP makes step times equal)
        busy = {r: run.scalar("busy_time", r) for r in (0, 1)}
        # the sleep is a floor under rank 1's busy time from the fault on, whatever the machine's load; rank 0's
        # (had it waited for rank 1) and rank 1's before the fault go below it (ratios of medians swing under load)
        (s1, v1), (s0, v0) = busy[1], busy[0]
        assert (v1[s1 > at] >= STRAGGLE_SECONDS).all()
        assert v0[s0 > at].min() < STRAGGLE_SECONDS and v1[(s1 > 0) & (s1 < at)].min() < STRAGGLE_SECONDS
    else:  # relu3 outputs only zeros from the fault on, on every rank
        for rank in (0, 1):
            s, zero = run.stat("act_zero_frac", "relu3", rank)
            assert (zero[s > at] == 1.0).all() and (zero[s < at] < 0.9).all()
