"""The Recorder on the stack people train with, each case a user's script: bf16 autocast and bf16 models,
torch.compile before and after a warm-up, DDP with a frozen layer, FSDP2, resume, ConvTranspose, a user's own
conv module, two optimizers, a scheduler, a refused scalar; recorded numbers against plain torch."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tview
from tests.conftest import REPO, TinyCNN, make_data, train
from tview.errors import ConfigError


def plain_grad_norm(module):
    return float(torch.cat([p.grad.reshape(-1).double() for p in module.parameters(recurse=False)]).norm())


def test_bf16_autocast_records_every_step_in_float32(tmp_path):
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            norms.append(plain_grad_norm(model.conv2))
            opt.step()
            rec.step(loss=loss)
    run = tview.open_run(str(tmp_path / "r"))
    steps, grad_norm = run.stat("grad_norm", "conv2")
    assert list(steps) == [0, 1, 2]
    np.testing.assert_allclose(grad_norm, norms, rtol=1e-5)
    assert len(run.stat("act_mean", "conv1")[0]) == 1 and len(run.stat("act_zero_frac", "relu")[0]) == 3
    assert np.isfinite(run.scalar("loss")[1]).all()


def test_a_bf16_model_keeps_float32_snapshots_and_statistics(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN().to(torch.bfloat16)
    x, y = make_data()
    x = x.to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, probe_batch=(x[:4], y[:4])) as rec:
        train(model, rec, 2, x, y, opt=opt)
    run = tview.open_run(str(tmp_path / "r"))
    step, filters = run.filters("conv1")
    assert filters.dtype == np.float32 and filters.shape == (4, 1, 3, 3)
    np.testing.assert_array_equal(filters, model.conv1.weight.detach().float().numpy()) if step == 1 else None
    _, fmaps = run.feature_maps("conv1")
    assert fmaps.dtype == np.float32 and fmaps.shape == (4, 4, 8, 8)
    _, wn = run.stat("weight_norm", "conv1")
    assert wn[-1] == pytest.approx(float(model.conv1.weight.double().square().sum()
                                         + model.conv1.bias.double().square().sum()) ** 0.5, rel=1e-6)
    assert run.scalar("loss")[1].dtype.kind == "f" and np.isfinite(run.scalar("loss")[1]).all()


@pytest.mark.parametrize("warm_up, fullgraph", [(False, True), (True, False)])
def test_a_compiled_model_records_activations_without_graph_breaks(tmp_path, warm_up, fullgraph):
    """fullgraph=True: dynamo raises at a graph break, so tview's hooks (detail steps too) must trace whole."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=fullgraph)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if warm_up:  # the compiled model ran before the Recorder was made
        F.cross_entropy(compiled(x), y).backward()
    with tview.Recorder(compiled, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
        train(compiled, rec, 4, x, y, opt=opt)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    run = tview.open_run(str(tmp_path / "r"))
    assert run.layers == ["conv1", "bn1", "relu", "conv2", "fc"]  # no "_orig_mod."
    steps, zeros = run.stat("act_zero_frac", "relu")
    assert list(steps) == [0, 1, 2, 3] and ((zeros > 0.2) & (zeros < 0.8)).all()
    out = F.relu(model.conv2(F.relu(model.bn1(model.conv1(x)))))  # relu's second call, after the last step
    assert len(run.stat("act_mean", "conv2")[0]) == 1 and out.shape[1] == 6


def record_two_copies(tmp_path, compiled: bool) -> list[tuple]:
    """Two TinyCNN copies of different weights, one fed 100x the other's input, each with its own Recorder (weights
    fixed: lr 0), trained in turns; per copy, its conv1 activation means and relu zero fractions."""
    torch._dynamo.reset()
    x, y = make_data()
    copies = []
    for k, scale in enumerate((1.0, 100.0)):
        torch.manual_seed(k)
        model = TinyCNN()
        run = torch.compile(model, backend="aot_eager") if compiled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        copies.append((run, opt, scale, tview.Recorder(run, str(tmp_path / f"{compiled}-{k}"), every=1,
                                                     optimizer=opt, preset="activations")))
    for _ in range(3):
        for run, opt, scale, rec in copies:
            opt.zero_grad()
            F.cross_entropy(run(x * scale), y).backward()
            opt.step()
            rec.step()
    out = []
    for *_, rec in copies:
        rec.close()
        stored = tview.open_run(rec.run_dir)
        out.append((stored.stat("act_mean", "conv1")[1], stored.stat("act_zero_frac", "relu")[1]))
    return out


@pytest.mark.parametrize("first", ["plain copy", "recorded copy"])
def test_a_compiled_copy_of_the_recorded_model_does_not_take_its_statistics_away(tmp_path, first):
    """A teacher or EMA copy of the student's class, compiled beside it and trained in turns: dynamo shares one class's
    code between copies and by default does not guard on hooks, so the recorded copy ran the plain copy's code
    (traced without tview's hooks) and lost its activation statistics step after step, said once. tview makes dynamo
    guard on hooks while it records a compiled model (and puts the setting back at close)."""
    torch._dynamo.reset()
    x, y = make_data()
    torch.manual_seed(0)
    plain, student = TinyCNN(), TinyCNN()
    plain_c, student_c = torch.compile(plain, backend="aot_eager"), torch.compile(student, backend="aot_eager")
    if first == "plain copy":
        F.cross_entropy(plain_c(x), y).backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(student_c, str(tmp_path / "r"), every=1) as rec:
            assert torch._dynamo.config.skip_nnmodule_hook_guards is False
            for _ in range(5):
                F.cross_entropy(student_c(x), y).backward()
                rec.step()
                F.cross_entropy(plain_c(x), y).backward()
    assert torch._dynamo.config.skip_nnmodule_hook_guards is True  # torch's default, put back
    assert not [str(w.message) for w in caught if "tview" in str(w.message)]
    run = tview.open_run(str(tmp_path / "r"))
    expected = F.relu(student.bn1(student.conv1(x)))  # relu's first call: (the net is not trained: no optimizer)
    steps, zeros = run.stat("act_zero_frac", "relu")
    assert list(steps) == [0, 1, 2, 3, 4]
    assert 0.2 < zeros[0] < 0.8 and expected.shape[0] == x.shape[0]


def test_two_recorders_on_two_compiled_copies_of_one_class_record_what_they_record_eagerly(tmp_path):
    """Compiled copies of one class share dynamo's cached code: each Recorder still gets its own copy's
    statistics, the same as eagerly."""
    eager, compiled = record_two_copies(tmp_path, False), record_two_copies(tmp_path, True)
    for (mean_e, zeros_e), (mean_c, zeros_c) in zip(eager, compiled):
        assert len(mean_c) == 3 and np.allclose(mean_c, mean_e, rtol=1e-4), (mean_c, mean_e)
        assert np.allclose(zeros_c, zeros_e), (zeros_c, zeros_e)
    assert abs(eager[1][0][0]) > 2 * abs(eager[0][0][0])  # the copies differ: a mix-up would show


def test_a_plain_model_trained_through_an_earlier_compiled_copy_is_said_and_recorded_from_the_next_step(tmp_path):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(compiled(x), y).backward()  # warm-up of the compiled model
    with pytest.warns(RuntimeWarning, match="no activation statistics came from this step's forward pass"):
        with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt) as rec:  # the plain model given
            train(compiled, rec, 3, x, y, opt=opt)
    steps, _ = tview.open_run(str(tmp_path / "r")).stat("act_zero_frac", "relu")
    assert list(steps) == [1, 2]  # step 0's forward ran hook-free compiled code: said, not invented


def test_resume_continues_the_training_step_count_and_the_init_distance_origin(tmp_path):
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    w0 = model.conv2.weight.detach().clone()
    b0 = model.conv2.bias.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tview.Recorder(model, str(tmp_path / "r"), every=10, optimizer=opt, preset="full") as rec:
        train(model, rec, 45, x, y, opt=opt)  # training steps 0..44, recorded 0, 10, 20, 30, 40
    with tview.Recorder(model, str(tmp_path / "r"), every=10, optimizer=opt, mode="resume", preset="full") as rec:
        assert rec.current_step == 45
        train(model, rec, 16, x, y, opt=opt)  # steps 45..60: recorded 50, 60
    run = tview.open_run(str(tmp_path / "r"))
    assert list(run.steps()) == [0, 10, 20, 30, 40, 50, 60]
    w, b = model.conv2.weight.detach(), model.conv2.bias.detach()
    expected = float(torch.cat([(w - w0).reshape(-1), b - b0]).norm() / torch.cat([w0.reshape(-1), b0]).norm())
    steps, dist = run.stat("init_distance", "conv2")
    assert steps[-1] == 60 and dist[-1] == pytest.approx(expected, rel=1e-3)  # from the run's first weights


def test_conv_transpose_channels_are_output_channels(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(24, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    x, y = make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, preset="full", optimizer=opt) as rec:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        deconv = model[2]
        expected = (deconv.weight.grad.double().square().sum(dim=(0, 2, 3)) + deconv.bias.grad.double().square()).sqrt()
        opt.step()
        rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    _, norms = run.stat("grad_channel_norm", "2")
    assert norms.shape == (1, 8)
    np.testing.assert_allclose(norms[0], expected.numpy(), rtol=1e-5)
    _, filters = run.filters("2")
    assert filters.shape == (8, 24, 3, 3)  # rows: output channels
    np.testing.assert_array_equal(filters, deconv.weight.detach().transpose(0, 1).numpy())
    _, act_channels = run.stat("act_channel_zero_frac", "2")
    assert act_channels.shape == (1, 8)


class MyConv(nn.Module):
    """A user's own conv: its own Parameters and F.conv2d, no nn.Conv2d."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 1, 3, 3) * 0.3)
        self.b = nn.Parameter(torch.zeros(5))

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=1)


def test_a_users_own_conv_and_two_optimizers_are_recorded(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(MyConv(), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 64, 10))
    x, y = make_data()
    opt_a = torch.optim.SGD(model[0].parameters(), lr=0.1)
    opt_b = torch.optim.Adam(model[3].parameters(), lr=1e-3)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=[opt_a, opt_b]) as rec:
        for _ in range(2):
            opt_a.zero_grad()
            opt_b.zero_grad()
            F.cross_entropy(model(x), y).backward()
            norm = plain_grad_norm(model[0])
            opt_a.step()
            opt_b.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    assert "0" in run.layers
    assert run.stat("grad_norm", "0")[1][-1] == pytest.approx(norm, rel=1e-5)
    assert list(run.scalar("lr")[1]) == [0.1, 0.1] and list(run.scalar("lr/1")[1]) == [1e-3, 1e-3]
    with pytest.raises(ConfigError, match="optimizer must be"):
        tview.Recorder(model, str(tmp_path / "s"), optimizer=[opt_a, "adam"])


def test_lr_is_the_one_the_step_used_and_a_refused_scalar_leaves_the_count_right(tmp_path):
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt)
    for step in range(4):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()  # the next step's lr, set before rec.step()
        if step == 1:
            with pytest.raises(ConfigError, match="'lr' is one tview records itself"):
                rec.step(loss=loss, lr=0.3)
        else:
            rec.step(loss=loss)
    rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    steps, lr = run.scalar("lr")
    assert list(steps) == [0, 2, 3] and list(lr) == [1.0, 0.25, 0.125]  # step 1 refused, still counted
    assert rec.current_step == 4


def test_lr_is_recorded_without_an_optimizer_given(tmp_path):
    """No optimizer= : the optimizers seen stepping the model's parameters give lr (global optimizer hooks)."""
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    other = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=7.0)  # not the model's: ignored
    with tview.Recorder(model, str(tmp_path / "r"), every=1) as rec:
        for step in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.param_groups[0]["lr"] = 0.5 * (step + 1)
            opt.step()
            other.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    assert list(run.scalar("lr")[1]) == [0.5, 1.0, 1.5] and "lr/1" not in run.scalar_names()
    assert len(run.scalar("after_step_time")[0]) == 3


def test_fsdp1_is_refused_up_front(tmp_path):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    # FSDP1 cannot be made without a GPU: a real FSDP1 object around a real model, made without its __init__
    wrapper = FSDP.__new__(FSDP)
    nn.Module.__init__(wrapper)
    wrapper._modules["_fsdp_wrapped_module"] = TinyCNN()
    with pytest.raises(ConfigError, match="FSDP1.*Use FSDP2"):
        tview.Recorder(nn.Sequential(wrapper), str(tmp_path / "r"))
    assert not os.path.exists(tmp_path / "r")  # refused before anything was written


def run_script(case, out):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "hooks", "stack_script.py"), case, out],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [dict(np.load(os.path.join(out, f"reference-{r}.npz"))) for r in (0, 1)]


def assert_recorded(run, stat: str, layer: str, rank: int, ref: dict, key: str, rtol: float = 1e-4):
    """The statistic of a layer on a rank, recorded on steps 0-3, equals the script's plain-torch ref[key/step]."""
    steps, values = run.stat(stat, layer, rank=rank)
    assert list(steps) == [0, 1, 2, 3], (stat, layer, rank)
    np.testing.assert_allclose(values, [ref[f"{key}/{s}"] for s in steps], rtol=rtol)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ddp_frozen", "ddp_frozen_no_powsum"])
def test_ddp_with_a_frozen_layer_records_local_and_global_gradients(tmp_path, case):
    """Also as on torch 2.5-2.10, which lack torch._foreach_powsum (no_powsum: _foreach_norm, squared in place)."""
    refs = run_script(case, str(tmp_path / "r"))
    run = tview.open_run(str(tmp_path / "r"))
    for rank, ref in enumerate(refs):
        assert_recorded(run, "local_grad_norm", "conv2", rank, ref, "local")
        assert_recorded(run, "grad_norm", "conv2", rank, ref, "grad")
        assert len(run.stat("grad_norm", "conv1", rank=rank)[0]) == 0  # frozen: no gradient, never a made-up one
        assert len(run.stat("weight_norm", "conv1", rank=rank)[0]) == 4
        for name in ("busy_time", "wait_time", "after_step_time"):
            assert len(run.scalar(name, rank=rank)[0]) == 4, name
        assert not [m for m in ref["said"] if "failed" in m]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["hook_fails", "param_hook_fails"])
def test_ddp_training_goes_on_when_tviews_local_gradient_hook_fails(tmp_path, where):
    """tview's part of DDP's communication hook (or of the parameters' gradient hooks, where the user has a comm hook
    of their own) raises: the all-reduce and the backward pass go on, every step is recorded but local_grad_norm,
    and each rank says once what failed."""
    refs = run_script(f"ddp_frozen_{where}", str(tmp_path / "r"))
    run = tview.open_run(str(tmp_path / "r"))
    for rank, ref in enumerate(refs):
        assert_recorded(run, "grad_norm", "conv2", rank, ref, "grad")
        assert len(run.stat("local_grad_norm", "conv2", rank=rank)[0]) == 0
        failed = [m for m in ref["said"] if "local_grad_norm" in m and "injected failure" in m]
        assert len(failed) == 1, list(ref["said"])
    # the ranks trained on different batches: equal gradients mean the all-reduce took place
    np.testing.assert_allclose([refs[0][f"grad/{s}"] for s in range(4)], [refs[1][f"grad/{s}"] for s in range(4)])


@pytest.mark.slow
def test_fsdp2_norms_equal_the_unsharded_models(tmp_path):
    refs = run_script("fsdp2", str(tmp_path / "r"))
    run = tview.open_run(str(tmp_path / "r"))
    for rank, ref in enumerate(refs):
        for name in ("conv1", "conv2", "fc"):
            assert_recorded(run, "grad_norm", name, rank, ref, f"grad/{name}")
            assert_recorded(run, "weight_norm", name, rank, ref, f"weight/{name}")
        assert len(run.stat("act_zero_frac", "relu", rank=rank)[0]) == 4


@pytest.mark.slow
def test_ddp_gradient_accumulation_under_no_sync_records_each_ranks_accumulated_gradient(tmp_path):
    """Two micro-batches a step, the first under ddp.no_sync() (no all-reduce), the second synchronised: the local
    gradient norm is this rank's gradient accumulated over both (DDP's comm hook sees it once, at the second), the
    gradient norm the all-reduced one, the examples both micro-batches'."""
    refs = run_script("ddp_no_sync", str(tmp_path / "r"))
    run = tview.open_run(str(tmp_path / "r"))
    for rank, ref in enumerate(refs):
        assert_recorded(run, "local_grad_norm", "conv2", rank, ref, "local")
        assert_recorded(run, "grad_norm", "conv2", rank, ref, "grad")
        assert list(run.scalar("examples", rank=rank)[1]) == [32] * 4
    local = [run.stat("local_grad_norm", "conv2", rank=r)[1] for r in (0, 1)]
    assert not np.allclose(*local)  # each rank its own


@pytest.mark.slow
def test_fsdp2_with_a_bfloat16_mixed_precision_policy_records_the_full_tensors_norms(tmp_path):
    """fully_shard(mp_policy=MixedPrecisionPolicy(param_dtype=bfloat16)): the forward runs in bfloat16 on unsharded
    copies; the gradient and weight norms are those of the full float32 tensors (DTensor.full_tensor())."""
    refs = run_script("fsdp2_bf16", str(tmp_path / "r"))
    run = tview.open_run(str(tmp_path / "r"))
    for rank, ref in enumerate(refs):
        assert_recorded(run, "grad_norm", "2", rank, ref, "grad")
        assert_recorded(run, "weight_norm", "2", rank, ref, "weight", rtol=1e-5)
        assert np.isfinite(run.stat("act_zero_frac", "1", rank=rank)[1]).all()


DEVICE_PATH_SCRIPT = """
import sys, torch, tview, torch.nn.functional as F
sys.path.insert(0, {repo!r})
from tests.conftest import TinyCNN, make_data
from tview.hooks.opcount import OpCounter
torch.manual_seed(0)
model, (x, y) = TinyCNN(), make_data()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
rec = tview.Recorder(model, {out!r}, every=1, optimizer=opt, preset="full")
with OpCounter() as count:
    for _ in range(3):
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step(); rec.step(loss=loss)
rec.close()
print("SYNCS", count.syncs, dict(count.sync_names))
"""


@pytest.mark.slow
def test_the_device_code_path_never_makes_the_host_wait_and_agrees_with_the_host_path(tmp_path):
    """TVIEW_FORCE_DEVICE_PATH=1: the CPU takes the GPU's code path, where every sync-prone op is counted."""
    runs = {}
    for forced in ("1", "0"):
        out = str(tmp_path / f"r{forced}")
        env = dict(os.environ, PYTHONPATH=REPO, TVIEW_FORCE_DEVICE_PATH=forced)
        proc = subprocess.run([sys.executable, "-c", DEVICE_PATH_SCRIPT.format(repo=REPO, out=out)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if forced == "1":
            assert "SYNCS 0 " in proc.stdout, proc.stdout
        runs[forced] = tview.open_run(out)
    for name in ("grad_norm", "grad_mean", "weight_norm", "update_ratio", "act_mean", "act_zero_frac", "act_nan"):
        for layer in ("conv1", "bn1", "conv2", "fc"):
            a, b = runs["1"].stat(name, layer), runs["0"].stat(name, layer)
            assert list(a[0]) == list(b[0]), (name, layer)
            np.testing.assert_allclose(a[1], b[1], rtol=2e-5, atol=1e-7, err_msg=f"{name} {layer}")


BOUNDED_OPS_SCRIPT = """
import sys, torch, tview, tempfile, torch.nn.functional as F
sys.path.insert(0, {repo!r})
from tview.hooks.opcount import OpCounter

def net(depth):
    layers = [torch.nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(depth):
        layers += [torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=True)]
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10))

def step(model, opt, x, y, rec=None):
    with OpCounter() as count:
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
        if rec is not None:
            rec.step(loss=loss)
    return count.ops, count.syncs, count.calls

for depth in (2, 8):
    torch.manual_seed(0)
    model, x, y = net(depth), torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, foreach=True)
    train, _, train_calls = min(step(model, opt, x, y) for _ in range(3))
    rec = tview.Recorder(model, tempfile.mkdtemp(), every=1, optimizer=opt, preset={preset!r})
    added = [step(model, opt, x, y, rec) for _ in range(4)]  # detail step 0, then ordinary steps
    rec.close()
    print("DEPTH", depth, "TRAIN", train, "DETAIL", added[0][0] - train, "ORDINARY", added[-1][0] - train,
          "SYNCS", sum(a[1] for a in added), "CALLS", added[-1][2] - train_calls)
"""


@pytest.mark.slow
def test_the_ops_tview_adds_do_not_grow_with_the_layer_count(tmp_path):
    """On the device code path, a net of 8 blocks costs tview the same ops per recorded step as one of 2 (the
    activation statistics of every layer are reduced together; an in-place ReLU's victim adds one copy each)."""
    env = dict(os.environ, PYTHONPATH=REPO, TVIEW_FORCE_DEVICE_PATH="1")
    proc = subprocess.run([sys.executable, "-c", BOUNDED_OPS_SCRIPT.format(repo=REPO, preset="default")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {int(line.split()[1]): dict(zip(line.split()[2::2], map(int, line.split()[3::2])))
           for line in proc.stdout.splitlines() if line.startswith("DEPTH")}
    shallow, deep = got[2], got[8]
    assert deep["TRAIN"] > 2 * shallow["TRAIN"]  # the nets really differ
    assert deep["SYNCS"] == shallow["SYNCS"] == 0
    assert deep["ORDINARY"] - shallow["ORDINARY"] <= 6  # one sample copy per BatchNorm overwritten in place
    # the host's share (every dispatch, views too: 1-3 us each on a GPU) grows by a few per module, not by the
    # dozens per module that per-tensor results gathered in one cat cost (b6bceac: 26 per module, now 3)
    assert deep["CALLS"] - shallow["CALLS"] <= 4 * 18  # 6 blocks more of conv, BatchNorm, ReLU
    assert deep["DETAIL"] - shallow["DETAIL"] <= 6


def test_the_op_counter_counts_a_cat_of_mixed_dtypes_as_a_copy_per_input():
    """CUDA runs a cat whose inputs differ in dtype as one copy per input (the H200 profile: 178 kernels a step
    from tview's transfer, which the counter had counted as one op); the counter says so, and counts every
    dispatch and the tensors passed (the host's share)."""
    from tview.hooks.opcount import OpCounter
    parts = [torch.zeros(2), torch.zeros(3, dtype=torch.float64), torch.zeros(1)]
    with OpCounter() as mixed:
        torch.cat(parts)
    alike = parts[::2]
    with OpCounter() as same:
        torch.cat(alike).view(3)
    assert mixed.ops == 3 and "cat (dtypes differ: a copy per input)" in mixed.by_name
    assert same.ops == 1 and same.calls == 2 and same.tensors == 3  # the cat's 2 inputs, the view's 1


@pytest.mark.parametrize("has_powsum", [True, False])
def test_foreach_powsum_equals_plain_sums_of_powers_with_or_without_torchs_op(monkeypatch, has_powsum):
    from tview.hooks import foreach
    monkeypatch.setattr(foreach, "HAS_POWSUM", has_powsum and hasattr(torch, "_foreach_powsum"))
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g).to(torch.bfloat16), torch.zeros(0),
               torch.tensor([1.0, float("inf")]), torch.tensor([float("nan"), 2.0]), torch.full((4,), 3e20)]
    for power in (1, 2):
        got = [float(t) for t in foreach.foreach_powsum(tensors, power)]
        want = [float(t.double().abs().pow(power).sum()) for t in tensors]
        assert all(r.dtype == torch.float32 for r in foreach.foreach_powsum(tensors, power))
        np.testing.assert_allclose(got[:3], want[:3], rtol=1e-5)
        assert got[3] == np.inf and np.isnan(got[4])
        assert got[5] == (np.inf if power == 2 else pytest.approx(want[5], rel=1e-5))  # float32 overflows, as torch's


def test_cpu_recording_without_foreach_powsum_records_plain_norms(tmp_path, monkeypatch):
    """As on torch 2.5-2.10: the CPU's every-step pass takes its squared norms from the fallback."""
    from tview.hooks import foreach
    monkeypatch.setattr(foreach, "HAS_POWSUM", False)
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads, weights = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing fails, nothing is said
        with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
            for _ in range(3):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                grads.append(plain_grad_norm(model.conv2))
                opt.step()
                weights.append(float(torch.cat([p.detach().reshape(-1).double()
                                                for p in model.conv2.parameters()]).norm()))
                rec.step(loss=loss)
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("grad_norm", "conv2")[1], grads, rtol=1e-5)
    np.testing.assert_allclose(run.stat("weight_norm", "conv2")[1], weights, rtol=1e-5)
