"""Each probe against a plain-torch re-computation of the same number."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tview
from tests.conftest import TinyCNN, make_data
from tview.hooks.transfer import HostTransfer
from tview.store import schema


def capture_outputs(model):
    """Plain forward hooks that keep a copy of each module's outputs (a list: modules may run twice)."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_hook(
                lambda mod, i, o, name=name: seen.setdefault(name, []).append(o.detach().clone())))
    return seen, handles


def one_recorded_step(tmp_path, preset="full", x=None, y=None, model=None, **kw):
    torch.manual_seed(0)
    model = model or TinyCNN()
    if x is None:
        x, y = make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, preset=preset, optimizer=opt, **kw)
    seen, handles = capture_outputs(model)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for h in handles:
        h.remove()
    rec.step(loss=loss)
    rec.close()
    return tview.open_run(str(tmp_path / "r")), model, seen, grads, w_before, loss.item()


def assert_moments(run, layer, flat: torch.Tensor, rel: float = 1e-5):
    """The layer's recorded moments, zero fraction and NaN flag (one step) against plain torch over `flat`."""
    assert stat(run, "act_mean", layer) == pytest.approx(flat.mean().item(), rel=rel, abs=rel / 100)
    assert stat(run, "act_std", layer) == pytest.approx(flat.std().item(), rel=1e-4)
    assert stat(run, "act_min", layer) == pytest.approx(flat.min().item(), rel=1e-6)
    assert stat(run, "act_max", layer) == pytest.approx(flat.max().item(), rel=1e-6)
    assert stat(run, "act_zero_frac", layer) == pytest.approx((flat == 0).double().mean().item(), abs=1e-7)
    assert stat(run, "act_nan", layer) == 0


def stat(run, name, layer):
    steps, values = run.stat(name, layer)
    assert list(steps) == [0]
    return values[0]


def test_activation_statistics_match_torch(tmp_path):
    run, model, seen, _, _, _ = one_recorded_step(tmp_path)
    for layer in ("conv1", "bn1", "conv2", "relu"):
        outs = seen[layer]
        flat = torch.cat([o.reshape(-1) for o in outs]).double()
        assert_moments(run, layer, flat, rel=1e-4)
        assert stat(run, "act_inf", layer) == 0
    # per channel, for a module run once
    out = seen["conv2"][0]
    np.testing.assert_allclose(stat(run, "act_channel_mean", "conv2"), out.mean(dim=(0, 2, 3)).numpy(),
                               rtol=1e-4, atol=1e-6)
    out = seen["bn1"][0]
    np.testing.assert_allclose(stat(run, "act_channel_zero_frac", "bn1"),
                               (out == 0).double().mean(dim=(0, 2, 3)).numpy(), atol=1e-7)
    # the ReLU runs on 4 then 6 channels: no per-channel merge is possible, so not measured (never a
    # wrong number, never a NaN that would read as the model's)
    assert len(run.stat("act_channel_mean", "relu")[0]) == 0
    # a dead share really seen: ReLU zeros are about half of its outputs
    assert 0.3 < stat(run, "act_zero_frac", "relu") < 0.7


def test_activation_histogram_counts_every_element_in_the_full_preset(tmp_path):
    run, _, seen, _, _, _ = one_recorded_step(tmp_path)
    steps, edges, counts = run.histogram("act", "conv1")
    values = seen["conv1"][0].reshape(-1).double().numpy()
    assert counts[0].sum() == values.size
    ref = reference_histogram(values)
    assert np.abs(counts[0].astype(np.int64) - ref).sum() <= 2  # float32 vs float64 at bin edges


def test_default_preset_reads_whole_examples_from_the_batch_start_for_zeros_moments_and_histograms(tmp_path):
    from tview.hooks.schedules import get_preset
    # conv1's output is 32 x 4 x 8 x 8: 64 values per example and channel, so 1000 per channel take 16 examples
    run, _, seen, _, _, _ = one_recorded_step(tmp_path, preset=get_preset("default", act_sample=1000))
    out = seen["conv1"][0]
    first = out[:16].double()
    _, _, counts = run.histogram("act", "conv1")
    np.testing.assert_array_equal(counts[0], reference_histogram(first.reshape(-1).numpy()))
    np.testing.assert_allclose(stat(run, "act_channel_zero_frac", "conv1"),
                               (first == 0).double().mean(dim=(0, 2, 3)).numpy(), atol=1e-7)
    assert stat(run, "act_mean", "conv1") == pytest.approx(first.mean().item(), rel=1e-5, abs=1e-7)
    assert stat(run, "act_std", "conv1") == pytest.approx(first.std().item(), rel=1e-4)
    assert stat(run, "act_max", "conv1") == pytest.approx(first.max().item(), rel=1e-6)
    info = run.stat_info("act_zero_frac", "conv1")  # the reader says what the number is an estimate of
    assert (info["exact"], info["sample"], info["of"]) == (False, first.numel(), out.numel())
    assert run.stat_info("act", "conv1")["sample"] == first.numel()


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_one_example_holding_more_than_the_sample_is_thinned_to_every_kth_position(monkeypatch, device_path):
    """Where one example holds more values per channel than the sample needs, every k-th position of the first
    example is taken: per-row sums, zeros and extremes as plain torch computes them over those positions, for
    contiguous outputs (32x32: k divides the map; 31x31: it does not) and channels-last ones, in one batch."""
    from tview.hooks import probes
    from tview.hooks.activation_batch import ActivationBatch, RowIndex
    from tview.hooks.host_batch import HostBatch
    monkeypatch.setattr(probes, "FORCE_DEVICE_PATH", device_path)
    g = torch.Generator().manual_seed(0)
    outs = [torch.relu(torch.randn(4, 3, 64, 64, generator=g)), torch.relu(torch.randn(2, 5, 63, 63, generator=g)),
            torch.relu(torch.randn(2, 4, 64, 64, generator=g)).to(memory_format=torch.channels_last)]
    per_channel = 256 if not device_path else 64  # the device path thins above 4x the sample
    b = ActivationBatch(outs, RowIndex(), per_channel=per_channel) if device_path else HostBatch.of(outs, per_channel)
    expected = []
    for t in outs:
        first = t[0].reshape(t.shape[1], -1)
        expected.append(first[:, ::first.shape[1] // per_channel])
    assert [lay[3] for lay in b.layouts] == [e.shape[1] for e in expected]
    def per_row(f):
        return torch.cat([f(e.double()) for e in expected]).numpy()
    np.testing.assert_allclose(b.row_sums().numpy(), per_row(lambda r: r.sum(1)), rtol=1e-5)
    np.testing.assert_array_equal(b.row_zeros().numpy(), per_row(lambda r: (r == 0).sum(1)))
    np.testing.assert_array_equal(b.row_extreme("amax").numpy(), per_row(lambda r: r.amax(1)).astype(np.float32))
    np.testing.assert_array_equal(b.row_extreme("amin").numpy(), per_row(lambda r: r.amin(1)).astype(np.float32))


def test_the_cpu_paths_batch_takes_the_documented_sample_of_outputs_of_every_shape_and_dtype():
    """HostBatch (the CPU's own path, samples copied channel by channel as the hooks fire) against plain torch over
    flat_sample's values: several examples (8x8 maps), a Linear output, a 1-D one, a [N, C, L] one, a transposed
    (non-contiguous) one, channels-last, bfloat16, and an empty batch."""
    from tview.hooks.activation_batch import flat_sample
    from tview.hooks.host_batch import HostBatch
    g = torch.Generator().manual_seed(1)
    outs = [torch.relu(torch.randn(8, 6, 8, 8, generator=g)), torch.relu(torch.randn(40, 7, generator=g)),
            torch.randn(9, generator=g), torch.relu(torch.randn(5, 3, 50, generator=g)),
            torch.randn(4, 6, 20, 20, generator=g).transpose(2, 3),
            torch.relu(torch.randn(3, 5, 9, 9, generator=g)).to(memory_format=torch.channels_last),
            torch.relu(torch.randn(4, 3, 20, 20, generator=g)).bfloat16(), torch.zeros(0, 4, 5, 5)]
    batch = HostBatch.of(outs, 64)
    rows = []
    for t in outs:
        f, lay = flat_sample(t.float(), 64)
        if lay[0] == "flat":
            rows += [f.double().reshape(1, -1)]
        elif lay[0] == "nchw":
            rows += list(f.double().reshape(lay[1], lay[2], lay[3]).permute(1, 0, 2).reshape(lay[2], -1))
        else:
            rows += list(f.double().reshape(lay[1] * lay[3], lay[2]).t())
    rows = [r.reshape(-1) for r in rows]
    assert batch.n_rows == len(rows) == 6 + 7 + 1 + 3 + 6 + 5 + 3 + 4
    expect = {"zeros": [(r == 0).sum() for r in rows], "sums": [r.sum() for r in rows],
              "sumsq": [r.square().sum() for r in rows],
              "amin": [r.min() if r.numel() else torch.tensor(np.inf) for r in rows],
              "amax": [r.max() if r.numel() else torch.tensor(-np.inf) for r in rows]}
    for key, values in expect.items():
        got = batch.row_zeros() if key == "zeros" else (batch.row_sums() if key == "sums" else (
            batch.row_sumsq() if key == "sumsq" else batch.row_extreme(key)))
        np.testing.assert_allclose(got.numpy(), torch.stack(values).numpy(), rtol=1e-5, err_msg=key)
    assert batch.sampled() == [float(sum(r.numel() for r in rows[a:b])) for a, b in
                               zip(batch.row_start[:-1], batch.row_start[1:])]


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_histogram_bins_match_numpy_at_zero_edges_infinities_and_nan(monkeypatch, device_path):
    from tview.hooks import probes
    from tview.hooks.activation_batch import ActivationBatch, RowIndex
    from tview.hooks.host_batch import HostBatch
    monkeypatch.setattr(probes, "FORCE_DEVICE_PATH", device_path)  # the GPU's bucketize, or the CPU's passes

    def histogram(t):
        batch = ActivationBatch([t], RowIndex(), per_channel=None) if device_path else HostBatch.of([t], None)
        return batch.histograms()[0][:schema.HIST_BINS]
    edges = 10.0 ** (schema.HIST_LO + np.arange(schema.HIST_HALF + 1) / schema.HIST_PER_DECADE)
    values = np.concatenate([[0.0, 0.0, -0.0, 1e-12, -1e-12, 1e9, -1e9, 1.0, -1.0, 0.5, -3e-3],
                             edges[1:-1] * 1.0001, -edges[1:-1] * 1.0001,
                             np.random.default_rng(0).standard_normal(1000) * 10.0 ** np.arange(-5, 5).repeat(100)])
    special = np.array([np.inf, -np.inf, np.nan, np.nan])
    counts = histogram(torch.tensor(np.concatenate([values, special]), dtype=torch.float32)).numpy()
    ref = reference_histogram(values)
    ref[0] += 1  # -inf: outermost negative bin
    ref[-1] += 1  # +inf: outermost positive bin
    np.testing.assert_array_equal(counts, ref)  # NaN is not counted anywhere
    assert counts.sum() == values.size + 2


def reference_histogram(values):
    """The store's fixed signed-log bins computed with numpy: zeros in the middle, clamped ends."""
    k = schema.HIST_HALF
    logs = np.log10(np.abs(values[values != 0]))
    mags = np.clip(np.floor((logs - schema.HIST_LO) * schema.HIST_PER_DECADE), 0, k - 1)
    idx = (np.sign(values[values != 0]) * (mags + 1) + k).astype(int)
    ref = np.bincount(idx, minlength=schema.HIST_BINS)
    ref[k] += int((values == 0).sum())
    return ref


def test_gradient_statistics_cover_weight_and_bias_together(tmp_path):
    run, model, _, grads, _, _ = one_recorded_step(tmp_path)
    for layer in ("conv1", "bn1", "conv2", "fc"):
        g = torch.cat([grads[f"{layer}.weight"].reshape(-1), grads[f"{layer}.bias"].reshape(-1)]).double()
        assert stat(run, "grad_norm", layer) == pytest.approx(g.norm().item(), rel=1e-5)
        assert stat(run, "grad_mean", layer) == pytest.approx(g.mean().item(), rel=1e-4, abs=1e-9)
        assert stat(run, "grad_std", layer) == pytest.approx(g.std().item(), rel=1e-4)
        assert stat(run, "grad_max_abs", layer) == pytest.approx(g.abs().max().item(), rel=1e-6)
        assert stat(run, "grad_nan", layer) == 0
        _, _, counts = run.histogram("grad", layer)
        assert counts[0].sum() == g.numel()
        np.testing.assert_array_less(np.abs(counts[0].astype(int) - reference_histogram(g.numpy())).sum(), 3)
    # layers without parameters have no gradient statistics: absent, not NaN
    assert len(run.stat("grad_norm", "relu")[0]) == 0
    # single process: no local gradient before an all-reduce to report, so no such statistic
    assert "local_grad_norm" not in run.stat_names()
    with pytest.raises(KeyError, match="records no 'local_grad_norm'"):
        run.stat("local_grad_norm", "conv1")


def test_weight_norm_update_ratio_and_trajectory(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, seed=7)
    history = []
    for _ in range(42):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        history.append(torch.cat([model.conv2.weight.detach().reshape(-1),
                                  model.conv2.bias.detach().reshape(-1)]).clone())
        rec.step()
    rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    _, norms = run.stat("weight_norm", "conv2")
    np.testing.assert_allclose(norms, [h.norm().item() for h in history], rtol=1e-5)
    steps, ratio = run.stat("update_ratio", "conv2")
    assert list(steps) == list(range(1, 42))  # nothing to compare the first recorded step with: absent
    np.testing.assert_allclose(ratio, [(history[i] - history[i - 1]).norm().item() / history[i].norm().item()
                                           for i in range(1, 42)], rtol=1e-4)
    # trajectory: projection on fixed unit directions, on the default preset's detail steps (every
    # 20th record), the same directions for another recorder (another rank)
    steps, traj = run.trajectory("conv2")
    assert list(steps) == [0, 40] and traj.shape == (2, 3)
    torch.manual_seed(0)
    other = tview.Recorder(TinyCNN(), str(tmp_path / "r2"), every=1, seed=7, rank=1, world_size=2)
    i = other.param_layer_ids.index(other.layer_names.index("conv2"))
    d = next(p for p in other.param_probes if p.table == "trajectory").directions[i]
    assert d.shape == (3, history[0].numel())
    np.testing.assert_allclose(d.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(traj, torch.stack([d @ history[s] for s in steps]).numpy(), rtol=1e-4, atol=1e-6)
    other.close()


def test_scalars_loss_lr_examples(tmp_path):
    run, _, _, _, _, loss = one_recorded_step(tmp_path)
    assert run.scalar("loss")[1][0] == pytest.approx(loss, rel=1e-6)
    assert run.scalar("lr")[1][0] == pytest.approx(0.1)
    assert run.scalar("examples")[1][0] == 32  # the model input's leading dimension
    st = run.scalar("step_time")[1][0]
    assert run.scalar("examples_per_sec")[1][0] == pytest.approx(32 / st, rel=1e-6)
    assert run.scalar("host_rss_bytes")[1][0] > 10e6


def test_default_preset_samples_activations_but_finds_nan_everywhere(tmp_path):
    from tview.hooks.schedules import get_preset
    x, y = make_data(n=32)
    x[20, 0, 3, 3] = float("nan")  # in an example outside the 8-example sample
    run, _, seen, grads, _, loss = one_recorded_step(tmp_path, preset=get_preset("default", act_sample=512), x=x,
                                                     y=y)
    conv1 = seen["conv1"][0]
    assert torch.isnan(conv1[20]).any() and not torch.isnan(conv1[:8]).any()
    assert stat(run, "act_nan", "conv1") == 1 and stat(run, "act_inf", "conv1") == 0
    sample = conv1[:8].double()  # 512 values per channel of an 8x8 map: the first 8 examples
    assert stat(run, "act_mean", "conv1") == pytest.approx(sample.mean().item(), rel=1e-4, abs=1e-6)
    assert math.isnan(loss)  # NaN is data: training went on, the loss was recorded as NaN
    assert math.isnan(run.scalar("loss")[1][0])
    assert stat(run, "grad_nan", "fc") == 1
    # the gradient histogram counts every finite value, and no NaN
    _, _, counts = run.histogram("grad", "fc")
    numel = 6 * 8 * 8 * 10 + 10  # fc: weight and bias
    nans = int(torch.isnan(grads["fc.weight"]).sum() + torch.isnan(grads["fc.bias"]).sum())
    assert nans > 0 and counts[0].sum() == numel - nans  # Inf is counted, in the outermost bins


def test_inf_gradients_are_flagged_not_raised(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN()
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1)
    x, y = make_data()
    F.cross_entropy(model(x), y).backward()
    model.fc.weight.grad[0, :5] = float("inf")
    rec.step()
    rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    assert stat(run, "grad_inf", "fc") == 1 and stat(run, "grad_nan", "fc") == 0
    assert stat(run, "grad_max_abs", "fc") == float("inf")
    assert stat(run, "grad_norm", "fc") == float("inf")
    # counted per layer: the healthy layers report none
    assert stat(run, "grad_inf", "conv1") == 0 and stat(run, "grad_nan", "conv1") == 0
    assert np.isfinite(stat(run, "grad_norm", "conv1"))


def test_steps_that_are_not_recorded_leave_nothing(tmp_path, tiny):
    x, y = make_data()
    rec = tview.Recorder(tiny, str(tmp_path / "r"), every=tview.every(3), snapshot_every=[4])
    from tests.conftest import train
    train(tiny, rec, 8, x, y)
    rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    assert list(run.steps()) == [0, 3, 6]
    assert list(run.snapshot_steps()) == []  # step 4 was a snapshot step but not a recorded one


def test_forward_hooks_are_on_for_recorded_steps_and_measure_on_the_schedule(tmp_path, tiny):
    """An eager model's hooks are on for the recorded steps (off between them, once a recorded forward ran them:
    tests/hooks/test_forward_hooks.py); they compute the sentinels on every recorded step and the rest on detail
    steps, nothing on the others."""
    from torch._dynamo.utils import counters
    counters.clear()  # nothing compiled in this process as far as tview can tell (else: on for good)
    x, y = make_data()
    rec = tview.Recorder(tiny, str(tmp_path / "r"), every=2)  # default preset: activations every 40th record
    from tests.conftest import train
    hooks = []
    for _ in range(162):
        hooks.append(len(tiny.conv1._forward_hooks))
        train(tiny, rec, 1, x, y)
    rec.close()
    assert hooks == [1] + [0 if k % 2 else 1 for k in range(1, 162)]  # one hook on recorded steps, none between
    assert not tiny.conv1._forward_hooks and not tiny._forward_pre_hooks  # nothing left after close
    run = tview.open_run(str(tmp_path / "r"))
    steps, mean = run.stat("act_mean", "conv1")
    assert list(steps) == [0, 80, 160] and np.isfinite(mean).all()  # detail steps only: every 40th record
    steps, zeros = run.stat("act_zero_frac", "relu")
    assert list(steps) == list(range(0, 162, 2))  # the sentinels: every recorded step, none between
    assert ((zeros > 0.2) & (zeros < 0.8)).all()


def test_first_nonfinite_step_is_kept_per_layer_and_scalar(tmp_path, tiny):
    x, y = make_data()
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    rec = tview.Recorder(tiny, str(tmp_path / "r"), every=1, optimizer=opt)
    for step in range(6):
        xb = x.clone()
        if step >= 3:
            xb[0, 0, 0, 0] = float("nan")  # from step 3 on, one input pixel is NaN
        opt.zero_grad()
        loss = F.cross_entropy(tiny(xb), y)
        loss.backward()
        rec.step(loss=loss, clean=1.0)
    rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    first = run.first_nonfinite(0)
    assert first["layers"]["conv1"] == 3 and first["layers"]["fc"] == 3
    assert first["scalars"] == {"loss": 3}  # "clean" and the other scalars never were non-finite
    steps, nan = run.stat("grad_nan", "conv1")
    assert steps[np.argmax(nan > 0)] == 3  # the same as a scan of the stored counts
    # the sentinels count NaN in every layer's output on every recorded step, whatever the preset: the
    # activation NaN is dated at step 3 in conv1, where it entered, and in every layer after it
    steps, nan = run.stat("act_nan", "conv1")
    assert list(steps) == list(range(6)) and list(nan > 0) == [False] * 3 + [True] * 3
    assert first["layers"]["bn1"] == 3
    assert first["tensors"]["gradient"]["conv1"] == 3 and first["tensors"]["activation"]["conv1"] == 3
    from tview.cli import info_text
    text = info_text(str(tmp_path / "r"))
    assert "rank 0: NaN/Inf first at step 3 in conv1, bn1, relu, conv2, fc" in text, text


def test_parameter_reductions_agree_between_the_numpy_and_the_torch_path():
    """The CPU runs per-layer reductions in numpy, a GPU in torch: both against plain torch, here on CPU."""
    from tview.hooks.param_probes import GradChannelNorm, GradStats, UpdateRatio, WeightStats
    from tview.hooks.params import ParamContext, ParamStep
    torch.manual_seed(0)
    model = TinyCNN()
    modules = (model.conv1, model.bn1, model.conv2, model.fc)
    per_layer = [list(m.parameters(recurse=False)) for m in modules]
    F.cross_entropy(model(make_data()[0]), make_data()[1]).backward()
    model.fc.weight.grad[0, :3] = float("nan")
    model.conv2.weight.grad[0, 0, 0, 0] = float("inf")
    flat = [torch.cat([p.grad.reshape(-1).double() for p in ps]) for ps in per_layer]
    results = {}

    def run(probe, step, ctx):
        parts = dict(probe.compute(step))
        HostTransfer([parts]).finish()
        parts.pop("measured", None)
        return probe.finalize(parts, ctx)

    for host in (True, False):
        ctx = ParamContext(per_layer, [0, None, 0, 0])  # weight dim of the output channels
        ctx.host = host
        upd = UpdateRatio()
        assert upd.compute(ParamStep(ctx)) is None  # nothing to compare with yet
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)
        step = ParamStep(ctx)
        out = {**run(GradStats(), step, ctx), **run(WeightStats(), step, ctx), **run(upd, step, ctx)}
        out["grad_channel_norm"] = run(GradChannelNorm(), step, ctx)["grad_channel_norm"]
        with torch.no_grad():
            for p in model.parameters():
                p.div_(1.5)
        results[host] = out
    for r in results.values():
        np.testing.assert_allclose(r["grad_nan"], [0, 0, 0, 1])
        np.testing.assert_allclose(r["grad_inf"], [0, 0, 1, 0])
        ok = [0, 1]  # the layers without NaN or Inf
        np.testing.assert_allclose(r["grad_norm"][ok], [f.norm().item() for f in flat[:2]], rtol=1e-5)
        np.testing.assert_allclose(r["grad_mean"][ok], [f.mean().item() for f in flat[:2]], rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(r["grad_max_abs"], [f.abs().max().item() for f in flat], rtol=1e-6)
        assert np.isnan(r["grad_max_abs"][3])  # a NaN in the layer: its max |g| is NaN, not a number
        np.testing.assert_allclose(r["update_ratio"], 0.5 / 1.5, rtol=1e-5)  # W went to 1.5 W
        ref = torch.cat([model.conv1.weight.grad.reshape(4, -1), model.conv1.bias.grad[:, None]], 1).double()
        np.testing.assert_allclose(r["grad_channel_norm"][0], ref.norm(dim=1).numpy(), rtol=1e-5)
        assert r["grad_channel_norm"][1] is None  # bn1: not a Conv or Linear layer
        assert np.isinf(r["grad_channel_norm"][2][0]) and np.isfinite(r["grad_channel_norm"][2][1:]).all()
        assert np.isnan(r["grad_channel_norm"][3][0]) and np.isfinite(r["grad_channel_norm"][3][1:]).all()
    for k in results[True]:
        if k == "grad_channel_norm":
            for a, b in zip(results[True][k], results[False][k]):
                assert (a is None and b is None) or np.allclose(a, b, rtol=1e-5, equal_nan=True)
        else:
            np.testing.assert_allclose(results[True][k], results[False][k], rtol=1e-5, equal_nan=True, err_msg=k)


class InPlaceReLUNet(torch.nn.Module):
    """Conv, BatchNorm, then ReLU(inplace=True): the ReLU overwrites the BatchNorm's output tensor."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.relu = torch.nn.ReLU(inplace=True)
        self.fc = torch.nn.Linear(6 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.relu(self.bn(self.conv(x))).flatten(1))


def test_an_output_a_later_layer_overwrites_in_place_is_measured_as_its_layer_made_it(tmp_path):
    from tests.conftest import documented_sample
    torch.manual_seed(0)
    model, (x, y) = InPlaceReLUNet(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, preset="activations", optimizer=opt)
    seen, handles = capture_outputs(model)  # copies made in the hooks: the BatchNorm's output before the ReLU
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rec.step()
    rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    steps, means = run.stat("act_mean", "bn")
    assert list(steps) == [1, 2]  # step 0 finds the overwrite and leaves the BatchNorm out, never a wrong number
    for k, s in enumerate(steps):
        out = seen["bn"][s]
        first = documented_sample(out).double()
        assert means[k] == pytest.approx(first.mean().item(), abs=1e-6)  # pre-ReLU: negative values included
        assert run.stat("act_min", "bn")[1][k] == pytest.approx(first.min().item(), rel=1e-6)
        assert first.min() < 0
    _, relu_zero = run.stat("act_zero_frac", "relu")
    relu_out = seen["relu"][2]
    assert relu_zero[-1] == pytest.approx((documented_sample(relu_out) == 0).double().mean().item(), abs=1e-7)
    assert run.stat("act_zero_frac", "bn")[1][-1] == 0  # BatchNorm's own output has no exact zeros


def test_the_writers_batched_finalize_gives_the_rows_the_per_layer_finalize_gives():
    """ActCounts and ActChannelZeros finalize every output of a batch at once on the writer thread: the same rows
    as finalizing layer by layer, for maps, a Linear output, a 1-D output without channels, and a NaN and an Inf."""
    from tview.hooks import activation_probes as act
    from tview.hooks.host_batch import HostBatch
    from tview.hooks.rows import RowBuilder
    g = torch.Generator().manual_seed(2)
    outs = [torch.relu(torch.randn(4, 3, 8, 8, generator=g)), torch.relu(torch.randn(16, 5, generator=g)),
            torch.randn(7, generator=g), torch.relu(torch.randn(2, 4, 20, 20, generator=g))]
    outs[1][0, 2], outs[3][0, 1, 0, 0] = float("nan"), float("inf")
    batch = HostBatch.of(outs, 64)
    rows = RowBuilder([f"l{k}" for k in range(6)], [], None)
    layers = [5, 0, 3, 1]

    def on_host(parts):  # as the step's transfer hands them to the writer: tensors and lists of 0-d ones as arrays
        return {k: (v.numpy() if isinstance(v, torch.Tensor) else np.array([float(t) for t in v])
                    if v and isinstance(v[0], torch.Tensor) else v) for k, v in parts.items()}
    for probe in (act.ActCounts(), act.ActChannelZeros()):
        parts = on_host(probe.compute_batch(batch))
        assert act.outputs_finalizer(probe) is not None
        whole = rows.batch_row(probe, layers, batch.row_start, dict(parts))
        per_layer = rows.activation_row(probe, {layer: [act.output_parts(probe, parts, batch.row_start, k)]
                                                for k, layer in enumerate(layers)})
        np.testing.assert_array_equal(whole.measured, per_layer.measured)
        np.testing.assert_array_equal(whole.sample_n, per_layer.sample_n)
        np.testing.assert_array_equal(whole.total_n, per_layer.total_n)
        for name, value in per_layer.values.items():
            if isinstance(value, dict):
                assert sorted(whole.values[name]) == sorted(value)
                for layer, v in value.items():
                    np.testing.assert_allclose(whole.values[name][layer], v, rtol=1e-6)
            else:
                np.testing.assert_allclose(whole.values[name], value, rtol=1e-6, equal_nan=True)
    counts = rows.batch_row(act.ActCounts(), layers, batch.row_start, on_host(act.ActCounts().compute_batch(batch)))
    assert list(counts.values["act_nan"][layers]) == [0, 1, 0, 0]
    assert list(counts.values["act_inf"][layers]) == [0, 0, 0, 1]


def test_one_tensor_keeps_consecutive_results_as_one_view_and_stacks_the_others():
    """A multi-tensor reduction's per-tensor results, as CUDA returns them (0-d views of one buffer), become that
    buffer without an op; results in separate tensors (the CPU's) are stacked; the values are the same either way."""
    from tview.hooks.probes import one_tensor
    buf = torch.arange(5, dtype=torch.float32) * 1.5
    views = [buf[i] for i in range(5)]
    joined = one_tensor(views)
    assert joined.data_ptr() == buf.data_ptr() and torch.equal(joined, buf)
    parts = [torch.tensor(v) for v in (3.0, -1.0, 2.5)]
    stacked = one_tensor(parts)
    assert torch.equal(stacked, torch.tensor([3.0, -1.0, 2.5]))
    assert stacked.data_ptr() not in {p.data_ptr() for p in parts}
    gappy = [buf[0], buf[2], buf[3]]  # views of one buffer, not consecutive: stacked, values kept
    assert torch.equal(one_tensor(gappy), buf[[0, 2, 3]])
    norms = torch._foreach_norm([torch.ones(3), torch.full((2, 2), 2.0)], 2)
    assert torch.allclose(one_tensor(norms), torch.tensor([3 ** 0.5, 4.0]))


def test_device_transfer_moves_every_dtype_in_one_cat_bit_for_bit(monkeypatch):
    """The device path's transfer (forced on the CPU): float64, float32, int64, bool, bfloat16, strided and list values
    reach the host in one cat of words (no cat per dtype, no promoting cat) and each arrives with its exact bits;
    a strided value of one element, an empty one, lists that mix dtypes arrive right too."""
    from tview.hooks import probes
    from tview.hooks.opcount import OpCounter
    monkeypatch.setattr(probes, "FORCE_DEVICE_PATH", True)
    rng = np.random.default_rng(0)
    raw64 = rng.integers(0, 2 ** 63, 999, dtype=np.int64)  # every bit pattern, NaN payloads among them
    values = {"f64": torch.from_numpy(raw64.view(np.float64).copy()), "f32": torch.randn(5),
              "i64": torch.arange(9)[::3], "flags": torch.tensor([True, False, True]),
              "bf16": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
              "list": [torch.tensor(1.0), None, torch.tensor(2.5)],
              "nonfinite": torch.tensor([float("nan"), float("inf"), -0.0])}
    d = dict(values)
    with OpCounter() as ops:
        transfer = HostTransfer([d])
    # one cat of words; the bfloat16 values cast as copied; the buffer's copy to the host; the strided int64 made
    # contiguous (its words are narrower than its values)
    assert ops.by_name == {"cat": 1, "copy_": 2, "clone": 1}, ops.by_name
    transfer.finish()
    assert np.array_equal(d["f64"].view(np.int64), raw64)  # a float64 arrives as float64: its bits exact
    np.testing.assert_array_equal(d["f32"], values["f32"].double().numpy())
    np.testing.assert_array_equal(d["i64"], [0, 3, 6])
    np.testing.assert_array_equal(d["flags"], [1, 0, 1])
    np.testing.assert_array_equal(d["bf16"], [1.5, -2.25])
    np.testing.assert_array_equal(d["list"], [1.0, 0.0, 2.5])
    assert np.isnan(d["nonfinite"][0]) and d["nonfinite"][1] == np.inf and np.signbit(d["nonfinite"][2])
    odd = {"one, strided": torch.arange(6, dtype=torch.float64).reshape(1, 6)[:, 2],  # a batch of 1's column
           "none, strided": torch.empty(0, 6, dtype=torch.float64)[:, 2], "f32": torch.tensor([1.5]),
           "list, f32 and f64": [torch.tensor(1.0), None, torch.tensor(2.0, dtype=torch.float64)],
           "list, f64 and f32": [torch.tensor(2.5, dtype=torch.float64), torch.tensor(3.0)],
           "list, f32 and bf16": [torch.tensor(1.0), torch.tensor(2.0, dtype=torch.bfloat16)]}
    d = dict(odd)
    HostTransfer([d]).finish()
    assert {k: v.tolist() for k, v in d.items()} == {
        "one, strided": [2.0], "none, strided": [], "f32": [1.5], "list, f32 and f64": [1.0, 0.0, 2.0],
        "list, f64 and f32": [2.5, 3.0], "list, f32 and bf16": [1.0, 2.0]}


class SharedReLUNet(torch.nn.Module):
    """`act` runs three times on 4-channel outputs (its calls merge row by row); `mixed` on 4 then 8 channels (merged
    per layer: no per-channel answer); `conv` twice."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.act, self.mixed = torch.nn.ReLU(), torch.nn.ReLU()
        self.wide = torch.nn.Conv2d(4, 8, 1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = self.act(self.conv(self.act(self.conv(self.act(self.stem(x))))))
        return self.fc(self.mixed(self.wide(self.mixed(x))).flatten(1))


def shared_relu_step(tmp_path, micro_batches: int, compiled: bool = False):
    """SharedReLUNet's one recorded step (preset full) over `micro_batches` forward and backward passes of four 8x8
    examples each (the sample is the whole batch), maybe compiled: (the run, each module's outputs in call order)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4 * micro_batches, 1, 8, 8, generator=g), torch.randint(0, 10, (4 * micro_batches,), generator=g)
    torch.manual_seed(0)
    model = SharedReLUNet()
    trained = torch.compile(model, backend="aot_eager") if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = tview.Recorder(trained, str(tmp_path / "r"), every=1, preset="full", optimizer=opt)
    seen, handles = capture_outputs(model)
    for k in range(micro_batches):
        F.cross_entropy(trained(x[4 * k:4 * k + 4]), y[4 * k:4 * k + 4]).backward()
    for h in handles:
        h.remove()
    opt.step()
    rec.step()
    rec.close()
    return tview.open_run(str(tmp_path / "r")), seen


@pytest.mark.parametrize("micro_batches,compiled", [(1, False), (2, False), (1, True)],
                         ids=["one-pass", "two-passes", "compiled"])
@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_a_module_called_several_times_has_the_statistics_of_all_its_calls(tmp_path, monkeypatch, device_path,
                                                                           micro_batches, compiled):
    """Each statistic of a shared module over all its calls against plain torch over their outputs together: moments,
    zeros, NaN, histogram, and per channel where the calls have the same channels (none where they differ); with one
    forward pass per step, two (gradient accumulation: every call of both), and compiled (a batch per output)."""
    from tview.hooks import params, probes
    monkeypatch.setattr(probes, "FORCE_DEVICE_PATH", device_path)
    monkeypatch.setattr(params, "FORCE_DEVICE_PATH", device_path)
    if compiled:
        torch._dynamo.reset()
    run, seen = shared_relu_step(tmp_path, micro_batches, compiled)
    for layer, calls in (("act", 3), ("conv", 2), ("mixed", 2), ("stem", 1)):
        outs = seen[layer]
        assert len(outs) == calls * micro_batches
        flat = torch.cat([o.reshape(-1) for o in outs]).double()
        assert_moments(run, layer, flat)
        counts = run.histogram("act", layer)[2][0].astype(np.int64)
        assert np.abs(counts - reference_histogram(flat.numpy())).sum() <= 2 * len(outs)
        if layer == "mixed":
            assert len(run.stat("act_channel_mean", layer)[0]) == 0
            continue
        together = torch.cat(outs).double()
        np.testing.assert_allclose(stat(run, "act_channel_mean", layer), together.mean(dim=(0, 2, 3)).numpy(),
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(stat(run, "act_channel_zero_frac", layer),
                                   (together == 0).double().mean(dim=(0, 2, 3)).numpy(), atol=1e-7)


def test_a_statistic_sampled_on_some_steps_is_not_called_exact(tmp_path):
    """Batches of 16 then 2 (a loader's last batches): the first two steps sample 4 of 16 examples, the others read
    every value. stat_info compared the median sample size with the median tensor size and called it exact."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(256, 10))
    with tview.Recorder(model, str(tmp_path / "r"), every=1, preset="activations") as rec:
        for b in (16, 16, 2, 2, 2):
            F.cross_entropy(model(torch.randn(b, 1, 8, 8)), torch.randint(0, 10, (b,))).backward()
            rec.step()
    info = tview.open_run(str(tmp_path / "r")).stat_info("act_mean", "0")
    assert not info["exact"] and "a sample in 2 of 5 measurements" in info["note"], info


def test_a_compiled_outputs_parts_travel_packed_in_one_tensor_and_come_back_as_they_were():
    """packed_parts (in the compiled graph: one output per layer, not one per part) and unpacked_parts (host side)
    give back every part at its shape as float64 (what a statistic's transfer gives), the parts that are not tensors
    as they were; nothing to pack: as it is."""
    from tview.hooks import activation_probes as act
    a, b = act.ActMoments(), act.ActCounts()
    parts = [(a, {"sum": torch.arange(3, dtype=torch.float32), "max": torch.tensor([[1.5, -2.0]]), "n": 7}),
             (b, {"zeros": torch.tensor([2, 0, 1]), "norm": torch.tensor([float("nan")]), "of": 12,
                  "flag": torch.tensor([True, False])})]
    packed = act.packed_parts(parts)
    assert len(packed) == 1 and set(packed[0][1]) == {"values"} and packed[0][1]["values"].dtype == torch.float64
    back = act.unpacked_parts([(packed[0][0], {"values": packed[0][1]["values"].numpy()})])
    assert [p for p, _ in back] == [a, b]
    for (_, want), (_, got) in zip(parts, back):
        assert list(got) == list(want)  # in their order: a step's batches join only where their keys match
        for k, v in want.items():
            if isinstance(v, torch.Tensor):
                assert got[k].dtype == np.float64 and got[k].shape == tuple(v.shape)
                np.testing.assert_array_equal(got[k], v.double().numpy())
            else:
                assert got[k] == v
    plain = [(a, {"n": 3})]
    assert act.packed_parts(plain) is plain and act.unpacked_parts(plain) is plain
