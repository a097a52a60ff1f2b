"""Parameter statistics through the Recorder against plain-torch re-computations, on the CPU's own path and
on the device path (TVIEW_FORCE_DEVICE_PATH), for float32 and bfloat16 models, ConvTranspose, frozen and
empty parameters; the ops a recorded step adds, and FSDP2 across two processes."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tview
from tests.conftest import PY, python_env
from tests.hooks.test_probes import reference_histogram
from tview.hooks import params as P
from tview.hooks.opcount import OpCounter
from tview.hooks.transfer import HostTransfer

LAYERS = ("conv1", "bn", "up", "conv2", "fc")


class UpNet(nn.Module):
    """conv -> bn -> ConvTranspose (24 -> 8 channels, 8x8 -> 16x16) -> conv -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.up = nn.ConvTranspose2d(24, 8, 2, stride=2)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 16 * 16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        return self.fc(F.relu(self.conv2(F.relu(self.up(x)))).flatten(1))


def on_host(parts: dict) -> dict:
    """A probe's partials as its finalize gets them: through the step's host transfer."""
    parts = dict(parts)
    HostTransfer([parts]).finish()
    return parts


def flat(tensors, dtype=torch.float64):
    return torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])


def record(tmp_path, model, steps=3, dtype=torch.float32, preset="full", **kw):
    """Train `steps` steps recorded with the full preset; the run, and per step each layer's gradients and
    weights (after the optimizer step) as the re-computations see them, and the weights at Recorder()."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8, generator=g).to(dtype), torch.randint(0, 10, (16,), generator=g)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    layers = {n: getattr(model, n) for n in LAYERS}
    w0 = {n: [p.detach().clone() for p in m.parameters()] for n, m in layers.items()}
    grads, weights = [], []
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, preset=preset, optimizer=opt, **kw)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x).float(), y).backward()
        grads.append({n: [p.grad.clone() for p in m.parameters() if p.grad is not None] for n, m in layers.items()})
        opt.step()
        weights.append({n: [p.detach().clone() for p in m.parameters()] for n, m in layers.items()})
        rec.step()
    rec.close()
    return tview.open_run(str(tmp_path / "r")), rec, grads, weights, w0


def channel_grad_norms(module, grads):
    """Per output channel norm of the weight's and the bias's gradient, in float64."""
    w, b = (g.double() for g in grads)
    per_channel = w.transpose(0, 1) if isinstance(module, nn.ConvTranspose2d) else w
    return (per_channel.reshape(per_channel.shape[0], -1).square().sum(1) + b.square()).sqrt()


def check_gradients(run, model, grads, rtol):
    for name in LAYERS:
        steps, norm = run.stat("grad_norm", name)
        assert list(steps) == list(range(len(grads)))
        for s, gs in enumerate(grads):
            g = flat(gs[name])
            assert norm[s] == pytest.approx(g.norm().item(), rel=rtol)
            assert run.stat("grad_mean", name)[1][s] == pytest.approx(g.mean().item(), rel=rtol * 10, abs=1e-7)
            assert run.stat("grad_std", name)[1][s] == pytest.approx(g.std().item(), rel=rtol * 10)
            assert run.stat("grad_max_abs", name)[1][s] == pytest.approx(g.abs().max().item(), rel=rtol)
            assert run.stat("grad_nan", name)[1][s] == 0 and run.stat("grad_inf", name)[1][s] == 0
            counts = run.histogram("grad", name)[2][s].astype(int)
            assert counts.sum() == g.numel()
            assert np.abs(counts - reference_histogram(g.float().numpy())).sum() <= 4
        if name != "bn":
            module = getattr(model, name)
            channels = run.stat("grad_channel_norm", name)[1]
            for s, gs in enumerate(grads):
                np.testing.assert_allclose(channels[s], channel_grad_norms(module, gs[name]).numpy(), rtol=rtol)


def check_weights(run, rec, weights, w0, rtol, update_rtol=None):
    for name in LAYERS:
        for s, ws in enumerate(weights):
            w = flat(ws[name])
            assert run.stat("weight_norm", name)[1][s] == pytest.approx(w.norm().item(), rel=rtol)
            assert run.stat("weight_sum", name)[1][s] == pytest.approx(w.sum().item(), rel=1e-9, abs=1e-9)
            assert run.histogram("weight", name)[2][s].astype(int).sum() == w.numel()
            distance = (w - flat(w0[name])).norm() / flat(w0[name]).norm()
            # W0 read back from the kept float32 file: as exact as the other norms
            assert run.stat("init_distance", name)[1][s] == pytest.approx(distance.item(), rel=rtol * 10, abs=1e-7)
        steps, ratio = run.stat("update_ratio", name)
        assert list(steps) == list(range(1, len(weights)))
        for s in steps:
            w, before = flat(weights[s][name]), flat(weights[s - 1][name])
            expected = ((w - before).norm() / w.norm()).item()
            assert ratio[s - 1] == pytest.approx(expected, rel=update_rtol or rtol * 10)
        i = rec.param_layer_ids.index(rec.layer_names.index(name))
        traj = next(p for p in rec.param_probes if p.table == "trajectory")
        d = traj.directions[i].double()
        np.testing.assert_allclose(d.norm(dim=1).numpy(), 1.0, rtol=1e-6)
        expected = torch.stack([d @ flat(ws[name]) for ws in weights]).numpy()
        np.testing.assert_allclose(run.trajectory(name)[1], expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_every_parameter_statistic_matches_plain_torch(tmp_path, monkeypatch, device_path):
    monkeypatch.setattr(P, "FORCE_DEVICE_PATH", device_path)
    monkeypatch.setattr(P, "CAST_ROWS", 4)  # the device path's float64 weight sums through the scratch
    torch.manual_seed(0)
    model = UpNet()
    run, rec, grads, weights, w0 = record(tmp_path, model)
    assert run.stat("grad_channel_norm", "up")[1].shape == (3, 8)  # ConvTranspose2d(24, 8): output channels
    check_gradients(run, model, grads, rtol=1e-5)
    check_weights(run, rec, weights, w0, rtol=1e-5)


def test_bfloat16_model_in_small_chunks_matches_float32_recomputation(tmp_path, monkeypatch):
    """bf16 parameters and gradients: statistics in float32 (weight_sum in float64) from the bf16 values,
    computed through the chunked path (chunks far smaller than a tensor: pieces cross chunk ends)."""
    from tview.hooks.schedules import get_preset
    monkeypatch.setattr(P, "CHUNK_MIN", 4 * P.BLOCK)
    monkeypatch.setattr(P, "CHUNK_SHARE", 1000)
    torch.manual_seed(0)
    model = UpNet().to(torch.bfloat16)
    # the parameter side alone (activation statistics and filter snapshots of bf16 are the Recorder's part)
    run, rec, grads, weights, w0 = record(tmp_path, model, dtype=torch.bfloat16,
                                          preset=get_preset("full", activations=False), snapshot_every=[])
    assert len(rec.pctx.chunks) > 3 and not rec.pctx.use_copy
    check_gradients(run, model, grads, rtol=1e-4)
    # the update W - W_before is taken in bf16 (exact where the two are within a factor 2): ~1e-3 of it
    check_weights(run, rec, weights, w0, rtol=1e-4, update_rtol=3e-3)


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_float32_model_through_a_bounded_chunk_matches_plain_torch(tmp_path, monkeypatch, device_path):
    """The bounded-memory path: float32 statistics computed through a scratch chunk of 4 blocks (pieces cross
    chunk ends) instead of the weight copy, W0 read back from the file beside the shard, never held: the same
    numbers as plain torch."""
    monkeypatch.setattr(P, "FORCE_DEVICE_PATH", device_path)
    monkeypatch.setattr(P, "COPY_AS_SCRATCH", False)
    monkeypatch.setattr(P, "CAST_ROWS", 4)  # the device path's float64 weight sums in cast pieces
    monkeypatch.setattr(P, "CHUNK_MIN", 4 * P.BLOCK)
    monkeypatch.setattr(P, "CHUNK_SHARE", 1000)
    torch.manual_seed(0)
    model = UpNet()
    run, rec, grads, weights, w0 = record(tmp_path, model)
    ctx = rec.pctx
    assert len(ctx.chunks) > 3 and ctx.chunk.numel() == 4 * P.BLOCK and ctx.copy.numel() < 1.1 * sum(ctx.numels)
    init = next(p for p in rec.param_probes if p.table == "init_distance")
    assert init.origin.host is None and os.path.samefile(init.origin._file.name, ctx.origin_path)
    check_gradients(run, model, grads, rtol=1e-5)
    check_weights(run, rec, weights, w0, rtol=1e-5)


def test_a_failing_probe_leaves_the_weight_copy_whole_for_the_next_update_ratio(tmp_path, monkeypatch):
    """The weight copy is restored once a step, by the last probe that uses it as scratch: when that one fails
    (said, dropped), the weights still go back, and the next steps' update ratios are plain torch's."""
    def broken(*args, **kwargs):
        raise RuntimeError("a probe's bug")

    monkeypatch.setattr(P, "projections", broken)  # the trajectory: the last user of the scratch
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="trajectory"):
        run, rec, grads, weights, w0 = record(tmp_path, UpNet())
    assert not any(p.table == "trajectory" for p in rec.param_probes)
    for name in LAYERS:
        steps, ratio = run.stat("update_ratio", name)
        assert list(steps) == [1, 2]
        for s in steps:
            w, before = flat(weights[s][name]), flat(weights[s - 1][name])
            assert ratio[s - 1] == pytest.approx(((w - before).norm() / w.norm()).item(), rel=1e-4)


def test_init_distance_without_the_recorders_file_keeps_w0_in_a_temporary_file():
    """A ParamContext used on its own (no Recorder, no origin file): W0 goes to an unnamed temporary file,
    read back the same way."""
    from tview.hooks.param_probes import InitDistance
    torch.manual_seed(0)
    a, b = torch.randn(40, 30), torch.randn(30)
    start = torch.cat([a.reshape(-1), b]).clone()
    ctx = P.ParamContext([[a, b]], [0])
    probe = InitDistance()
    probe.setup(ctx)
    assert probe.origin.offsets == [0, 4 * a.numel()]
    a.add_(0.1)
    parts = on_host(probe.compute(P.ParamStep(ctx)))
    expected = (torch.cat([a.reshape(-1), b]) - start).norm() / start.norm()
    assert probe.finalize(parts, ctx)["init_distance"][0] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_frozen_layers_are_not_measured_and_nothing_crashes(tmp_path, monkeypatch, device_path):
    monkeypatch.setattr(P, "FORCE_DEVICE_PATH", device_path)  # the device path: per-block norms of the copy
    torch.manual_seed(0)
    model = UpNet()
    model.conv2.requires_grad_(False)
    model.fc.bias.requires_grad_(False)  # half a layer frozen: the statistics of the half that learns
    run, _, grads, weights, _ = record(tmp_path, model, steps=2)
    assert len(run.stat("grad_norm", "conv2")[0]) == 0 and len(run.stat("grad_channel_norm", "conv2")[0]) == 0
    assert len(run.histogram("grad", "conv2")[0]) == 0
    g = flat(grads[1]["fc"])  # the weight's gradient alone
    assert run.stat("grad_norm", "fc")[1][1] == pytest.approx(g.norm().item(), rel=1e-5)
    assert run.stat("grad_mean", "fc")[1][1] == pytest.approx(g.mean().item(), rel=1e-4, abs=1e-8)
    assert run.histogram("grad", "fc")[2][1].sum() == g.numel()
    assert run.stat("weight_norm", "conv2")[1][1] == pytest.approx(flat(weights[1]["conv2"]).norm().item(), rel=1e-5)
    assert run.stat("grad_norm", "up")[1][1] == pytest.approx(flat(grads[1]["up"]).norm().item(), rel=1e-5)


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_empty_tensors_and_local_gradient_norms_per_tensor(monkeypatch, device_path):
    """A parameter with no elements (an FSDP1 view) crashes no multi-tensor op (nor the device path's per-block
    norms); `local` as a DDP comm hook gives it, squared norms per parameter tensor, becomes per-layer local
    gradient norms."""
    from tview.hooks.param_probes import GradStats, LocalGradNorm, WeightStats
    monkeypatch.setattr(P, "FORCE_DEVICE_PATH", device_path)
    torch.manual_seed(0)
    a, b, c = (torch.randn(4, 3, requires_grad=True), torch.zeros(0, requires_grad=True),
               torch.randn(5, requires_grad=True))
    for t in (a, b, c):
        t.grad = torch.randn_like(t)
    ctx = P.ParamContext([[a, b], [c]], [0, None])
    assert ctx.blockwise == device_path
    local = torch.tensor([4.0, 0.0, 9.0])
    step = P.ParamStep(ctx, local)

    def run(probe):
        parts = on_host(probe.compute(step))
        parts.pop("measured", None)
        return probe.finalize(parts, ctx)

    stats = run(GradStats())
    assert stats["grad_norm"] == pytest.approx([a.grad.norm().item(), c.grad.norm().item()], rel=1e-6)
    assert stats["grad_max_abs"][0] == pytest.approx(a.grad.abs().max().item())
    assert run(WeightStats())["weight_norm"] == pytest.approx([a.norm().item(), c.norm().item()], rel=1e-6)
    assert run(LocalGradNorm())["local_grad_norm"] == pytest.approx([2.0, 3.0])


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_nan_and_inf_flags_per_layer(monkeypatch, device_path):
    """grad_nan is 1 where a layer's gradient holds a NaN (here beside Infs of both signs), grad_inf 1 where it
    holds an Inf and no NaN (a bias of -Inf), both 0 for finite values as large as float32 goes (their squares
    overflow the float32 sum of squares: not an Inf in the gradient)."""
    from tview.hooks.param_probes import GradStats
    monkeypatch.setattr(P, "FORCE_DEVICE_PATH", device_path)
    g = torch.randn(3000)
    g[:P.BLOCK] = float("nan")  # a whole block
    g[600:900:2], g[601:900:4], g[603:900:4] = float("nan"), float("inf"), -float("inf")  # mixed, across blocks
    big = torch.randn(700)
    big[10], big[11] = torch.finfo(torch.float32).max, -torch.finfo(torch.float32).max  # finite
    up = torch.randn(600)
    up[300] = float("inf")  # one +Inf among finite values: the mean is +Inf, as a plain sum makes it
    w, v, b, u = (torch.zeros(n, requires_grad=True) for n in (3000, 700, 7, 600))
    w.grad, v.grad, b.grad, u.grad = g, big, torch.full((7,), -float("inf")), up
    ctx = P.ParamContext([[w], [v], [b], [u]])
    step = P.ParamStep(ctx)
    out = GradStats().finalize({**on_host(step.grad_stats), "count": step.grad_count}, ctx)
    assert out["grad_nan"].tolist() == [1, 0, 0, 0]
    assert out["grad_inf"].tolist() == [0, 0, 1, 1]
    assert np.isnan(out["grad_max_abs"][0]) and out["grad_max_abs"][1] == torch.finfo(torch.float32).max
    assert out["grad_mean"][2] == -np.inf and out["grad_mean"][3] == np.inf and np.isnan(out["grad_mean"][0])
    assert out["grad_norm"][2:].tolist() == [np.inf, np.inf] and out["grad_max_abs"][2:].tolist() == [np.inf] * 2


def test_a_nan_local_gradient_stays_nan_and_a_frozen_tensor_adds_nothing():
    """Regression: the comm hook leaves NaN where a tensor had no local gradient (frozen) and where the gradient
    itself is NaN; only the first is 'none'. Read as 0, a NaN born in one rank's backward was blamed on every rank."""
    from tview.hooks.param_probes import LocalGradNorm
    a, frozen, c = torch.ones(2, requires_grad=True), torch.ones(3), torch.ones(4, requires_grad=True)
    ctx = P.ParamContext([[a, frozen], [c]], [0, None])
    probe = LocalGradNorm()
    out = probe.finalize({"sq": np.array([4.0, np.nan, np.nan])}, ctx)["local_grad_norm"]
    assert out[0] == 2.0 and np.isnan(out[1])


class Stack(nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(depth)])
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.convs(x).flatten(1))


def parameter_side_ops(tmp_path, depth: int) -> list[OpCounter]:
    """OpCounters of the parameter probes' work on a detail, a first ordinary and an ordinary step."""
    torch.manual_seed(0)
    model = Stack(depth)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rec = tview.Recorder(model, str(tmp_path / f"d{depth}"), every=1, optimizer=opt, flush_seconds=3600)
    counters = []
    for probe in rec.param_probes:
        def counted(step, compute=probe.compute):
            with OpCounter() as count:
                out = compute(step)
            counters[-1].append(count)
            return out
        probe.compute = counted
    x, y = torch.randn(2, 4, 6, 6), torch.randint(0, 3, (2,))
    for _ in range(3):
        counters.append([])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rec.step()
    rec.close()
    return [(sum(c.ops for c in cs), sum(c.syncs for c in cs)) for cs in counters]


def test_device_path_adds_no_sync_and_ops_independent_of_the_layer_count(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "FORCE_DEVICE_PATH", True)
    shallow, deep = parameter_side_ops(tmp_path, 4), parameter_side_ops(tmp_path, 16)
    assert shallow == deep  # detail step (0) and ordinary steps: the same ops for 5 or 17 layers
    assert all(syncs == 0 for _, syncs in deep)
    # ordinary step <= 15 ops, detail step <= 41 (foreach ops across tensors, one restore of the weight copy)
    assert 0 < deep[2][0] <= 15 and deep[0][0] <= 41


FSDP_SCRIPT = r'''
import os, sys, tempfile
import torch, torch.distributed as dist, torch.nn.functional as F
from torch.distributed.fsdp import fully_shard
import tview
from tests.hooks.test_param_stats import UpNet

def train(model, rank, world, run_dir, steps=3):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = tview.Recorder(model, run_dir, every=1, preset="economy", optimizer=opt, rank=rank, world_size=world,
                         snapshot_every=[])  # filter snapshots of DTensors: the Recorder's part
    for _ in range(steps):
        opt.zero_grad()
        lo, hi = rank * 16 // world, (rank + 1) * 16 // world
        F.cross_entropy(model(x[lo:hi]), y[lo:hi]).backward()
        opt.step()
        rec.step()
    rec.close()

rank, world, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = UpNet()
model.bn.eval()  # batch statistics of half a batch differ from the whole's: not what is compared here
if world > 1:
    dist.init_process_group("gloo", init_method=f"file://{out}/pg", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (world,))  # fully_shard's default mesh is on the GPU where one is present
    for m in (model.conv1, model.up, model.fc, model):
        fully_shard(m, mesh=mesh)
train(model, rank, world, os.path.join(out, "sharded" if world > 1 else "whole"))
if world > 1:
    dist.destroy_process_group()
'''


@pytest.mark.slow
def test_fsdp2_norms_equal_the_unsharded_models(tmp_path):
    """Two gloo ranks under fully_shard: grad_norm, grad_mean and weight_norm (each rank reduces its shards,
    the partials summed across ranks) equal those of the same model trained whole in one process."""
    import subprocess
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT)
    env = {**python_env(), "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([PY, str(script), "0", "1", str(tmp_path)], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-3000:]
    procs = [subprocess.Popen([PY, str(script), str(r), "2", str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    a, b = tview.open_run(str(tmp_path / "whole")), tview.open_run(str(tmp_path / "sharded"))
    for rank in (0, 1):
        for stat in ("grad_norm", "grad_mean", "grad_max_abs", "weight_norm", "update_ratio"):
            for layer in LAYERS:
                np.testing.assert_allclose(b.stat(stat, layer, rank=rank)[1], a.stat(stat, layer)[1], rtol=1e-4,
                                           atol=1e-8, err_msg=f"{stat} {layer} rank {rank}")
    assert os.path.exists(tmp_path / "sharded")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_weight_sums_of_a_large_model_follow_its_weights_on_the_device_path(tmp_path, monkeypatch, memory_format):
    """The device path's float64 weight sums (over 1M parameters: through the scratch, in parts) keep the pieces of
    the weights they read from one recorded step to the next; a channels_last conv's pieces are copies, which a
    kept list held at the first step's weights (weight_sum stayed put while the weights moved): each step's sum is
    the plain float64 sum of the weights at its rec.step()."""
    monkeypatch.setattr(P, "FORCE_DEVICE_PATH", True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(512, 512, 3), nn.Flatten(), nn.Linear(512 * 9, 2)).to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(4, 512, 5, 5).to(memory_format=memory_format), torch.tensor([0, 1, 0, 1])
    sums = []
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                model[0].weight.add_(0.01)  # the weights move visibly between records
            sums.append(float(model[0].weight.double().sum() + model[0].bias.double().sum()))
            rec.step()
    np.testing.assert_allclose(tview.open_run(str(tmp_path / "r")).stat("weight_sum", "0")[1], sums, rtol=1e-9)
