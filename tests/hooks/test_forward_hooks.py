"""The Recorder's forward hooks are off between recorded steps of an eager model (an unrecorded step pays for none)
and on for good once torch.compile is in play; recorded steps still get their activations and example counts."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tview
from tests.conftest import TinyCNN, make_data


def hooks_on(model) -> int:
    return len(model.conv1._forward_hooks) + len(model._forward_pre_hooks)


def fresh_dynamo():
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()  # nothing compiled yet in this process, as far as tview can tell


def test_hooks_are_off_between_recorded_steps_and_back_for_recorded_ones(tmp_path):
    fresh_dynamo()  # an earlier test's compiled graphs would keep them on for good
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with tview.Recorder(model, str(tmp_path / "r"), every=4, optimizer=opt) as rec:
        for _ in range(10):
            seen.append(hooks_on(model))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            rec.step()
        assert hooks_on(model) == 0  # the next step, 10, records nothing
    # on at step 0 (from the start), off after it ran eagerly; on again before 4 and 8
    assert seen == [2, 0, 0, 0, 2, 0, 0, 0, 2, 0]
    run = tview.open_run(str(tmp_path / "r"))
    steps, zeros = run.stat("act_zero_frac", "relu")
    assert list(steps) == [0, 4, 8]
    # the relu module runs twice (after bn1, after conv2): its fraction is over both calls' samples
    assert all(0 < z < 1 for z in zeros)
    steps, examples = run.scalar("examples")
    assert list(steps) == [0, 4, 8] and (examples == len(x)).all()  # the counting pre-hook was back on time
    assert np.isfinite(run.stat("act_mean", "conv1")[1]).all()


def test_a_compiled_model_keeps_its_hooks_between_recorded_steps(tmp_path):
    fresh_dynamo()
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with tview.Recorder(compiled, str(tmp_path / "r"), every=3, optimizer=opt) as rec:
        for _ in range(7):
            opt.zero_grad()
            F.cross_entropy(compiled(x), y).backward()
            opt.step()
            rec.step()
            seen.append(hooks_on(model))
    assert seen == [1] * 7  # never taken off: dynamo would not see them come back (the examples' pre-hook is on
    # the compiled wrapper)
    steps, _ = tview.open_run(str(tmp_path / "r")).stat("act_zero_frac", "relu")
    assert list(steps) == [0, 3, 6]


def test_a_model_first_compiled_on_an_unrecorded_step_is_said_and_recorded_again_after(tmp_path):
    fresh_dynamo()
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run_model = model
    with pytest.warns(RuntimeWarning, match="first compiled on a step tview did not record"):
        with tview.Recorder(model, str(tmp_path / "r"), every=2, optimizer=opt) as rec:
            for step in range(8):
                if step == 3:  # hooks off (eager, unrecorded step): compiled now, traced without them
                    run_model = torch.compile(model, backend="aot_eager")
                opt.zero_grad()
                F.cross_entropy(run_model(x), y).backward()
                opt.step()
                rec.step()
    steps, _ = tview.open_run(str(tmp_path / "r")).stat("act_zero_frac", "relu")
    assert list(steps) == [0, 2, 6]  # step 4 ran hook-free compiled code: said, retraced, recorded from 6 on


def test_a_step_without_a_forward_pass_in_an_eager_model_is_not_blamed_on_torch_compile(tmp_path):
    """rec.step() twice after one training step (gradients still there, no forward between): torch.compile is not
    named (the warning about compiled code traced without tview's hooks named it in a run that never compiled); the
    gradients read twice are."""
    fresh_dynamo()
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            rec.step()
            rec.step(loss=1.0)
    said = [str(w.message) for w in caught if "tview" in str(w.message)]
    assert len(said) == 1 and "no backward pass since" in said[0] and "compile" not in said[0]
    assert list(tview.open_run(str(tmp_path / "r")).scalar("loss")[0]) == [1]
