"""Store v2's contract, as a user's every=1 run meets it: every statistic only where measured, counts
exact over the whole tensor, NaN only where the model made it, new statistics against plain torch,
and a probe that returns a name it did not declare is refused by name (said once; training goes on)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tview
from tests.conftest import documented_sample, make_data
from tview.hooks.activation_probes import ActCounts


class ConvBNNet(nn.Module):
    """The issue's user script: conv-BN-ReLU-conv-ReLU-linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def record(tmp_path, steps=50, preset="default", hook=None, seed=0):
    """Train ConvBNNet `steps` steps with every=1; keep plain-torch copies of outputs and gradients."""
    torch.manual_seed(seed)
    model = ConvBNNet()
    x, y = make_data(32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, preset=preset, optimizer=opt)
    outs, grads = {}, {}
    names = {m: n for n, m in model.named_modules() if n}
    for step in range(steps):
        handles = [m.register_forward_hook(lambda mod, i, o, s=step: (outs.setdefault((names[mod], s),
                                                                                      o.detach().clone()), None)[1])
                   for m in names]
        if hook is not None:
            handles.append(hook(model, step))
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads[step] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        for h in handles:
            h.remove()
        rec.step(loss=loss)
    rec.close()
    return tview.open_run(str(tmp_path / "r")), model, outs, grads


def test_every_statistic_reads_back_only_where_measured_with_exact_counts(tmp_path):
    run, model, outs, grads = record(tmp_path)
    recorded = set(run.steps())
    assert recorded == set(range(50))
    for name in run.stat_names() + run.channel_stat_names():
        for layer in run.layers:
            try:
                steps, values = run.stat(name, layer)
            except KeyError:  # a per-channel statistic of a layer without channels
                continue
            assert set(steps) <= recorded and np.all(np.diff(steps) > 0), (name, layer)
            assert np.isfinite(values).all(), f"{name}/{layer}: NaN in a healthy run means 'not measured' leaked"
    # moments on detail steps (default preset: every 40th record): steps 0 and 40, nowhere else; the
    # sentinels (zero fraction, NaN, Inf) on every recorded step
    for layer in ("features.0", "features.1", "features.2", "features.3", "features.4", "fc"):
        assert list(run.stat("act_mean", layer)[0]) == [0, 40]
        steps, zero_frac = run.stat("act_zero_frac", layer)
        assert list(steps) == list(range(50))
        for k, s in enumerate(steps):  # over the sample: whole examples from the batch's start
            out = outs[(layer, s)]
            first = documented_sample(out)
            assert zero_frac[k] == pytest.approx((first == 0).double().mean().item(), abs=1e-7)
            assert run.stat("act_nan", layer)[1][k] == 0 and run.stat("act_inf", layer)[1][k] == 0
        if layer.startswith("features"):
            last = outs[(layer, 49)]
            _, czf = run.stat("act_channel_zero_frac", layer)
            np.testing.assert_allclose(czf[-1], (documented_sample(last) == 0).double().mean(dim=(0, 2)),
                                       atol=1e-7)
    # gradient statistics on every step, layers with parameters only
    assert list(run.stat("grad_norm", "features.1")[0]) == list(range(50))
    assert len(run.stat("grad_norm", "features.2")[0]) == 0  # a ReLU has no gradient
    out = outs[("features.0", 0)]
    info = run.stat_info("act_mean", "features.0")
    assert not info["exact"] and "estimated from" in info["note"]
    assert (info["sample"], info["of"]) == (documented_sample(out).numel(), out.numel())
    assert run.stat_info("act_zero_frac", "features.0") == info and run.stat_info("grad_norm")["exact"]


def test_a_nan_injected_at_step_k_reads_back_at_k_in_that_layer_and_nowhere_before(tmp_path):
    k = 7

    def inject(model, step):  # a NaN weight in features.3 from step k on: its output is NaN from then
        if step == k:
            with torch.no_grad():
                model.features[3].weight[2, 0, 1, 1] = float("nan")  # the centre: every position
        return model.register_forward_hook(lambda *a: None)

    run, _, _, _ = record(tmp_path, steps=12, preset="activations", hook=inject)
    for layer in ("features.0", "features.1", "features.2"):  # before the injection, in forward order
        steps, nan = run.stat("act_nan", layer)
        assert nan[steps <= k].sum() == 0
    steps, nan = run.stat("act_nan", "features.3")
    assert nan[list(steps).index(k)] == 1 and nan[steps < k].sum() == 0  # act_nan: the output holds a NaN
    assert run.first_nonfinite(0)["tensors"]["activation"]["features.3"] == k
    assert min(run.first_nonfinite(0)["tensors"]["activation"].values()) == k


def test_grad_channel_norm_and_init_distance_match_plain_torch(tmp_path):
    torch.manual_seed(0)
    init = {n: p.detach().clone() for n, p in ConvBNNet().named_parameters()}
    run, model, _, grads = record(tmp_path, steps=5, preset="full")
    for layer in ("features.0", "features.3", "fc"):
        steps, norms = run.stat("grad_channel_norm", layer)
        assert list(steps) == list(range(5))
        g = grads[4]
        ref = torch.cat([g[f"{layer}.weight"].flatten(1), g[f"{layer}.bias"][:, None]], 1).double().norm(dim=1)
        np.testing.assert_allclose(norms[-1], ref.numpy(), rtol=1e-5)
    with pytest.raises(KeyError, match="no grad_channel_norm for layer 'features.1'"):
        run.stat("grad_channel_norm", "features.1")  # BatchNorm: not a Conv or Linear layer
    for layer in ("features.0", "features.1", "fc"):
        w = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if n.startswith(layer + ".")])
        w0 = torch.cat([init[n].reshape(-1) for n in init if n.startswith(layer + ".")])
        steps, dist = run.stat("init_distance", layer)
        # W0 is kept as float16 with a power-of-two scale per tensor: exact to ~3e-4 |W0|
        assert dist[-1] == pytest.approx(((w - w0).norm() / w0.norm()).item(), rel=5e-4)
    _, wsum = run.stat("weight_sum", "fc")
    assert wsum[-1] == pytest.approx(sum(p.double().sum().item() for n, p in model.named_parameters()
                                         if n.startswith("fc.")), rel=1e-6)


class LeakyCounts(ActCounts):
    """A probe that returns a statistic its table does not declare."""

    def finalize(self, p):
        return dict(super().finalize(p), act_secret=1.0)


def test_a_statistic_the_probe_does_not_declare_is_refused_by_name_and_training_goes_on(tmp_path):
    torch.manual_seed(0)
    model = ConvBNNet()
    x, y = make_data(8)
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, preset="activations")
    rec.act_probes = [LeakyCounts(p.cadence) if isinstance(p, ActCounts) else p for p in rec.act_probes]
    rec._act_by_mode = {1: tuple(p for p in rec.act_probes if p.cadence == "every"), 2: tuple(rec.act_probes), 0: ()}
    rec._schedule()
    with pytest.warns(RuntimeWarning, match=r"LeakyCounts returned \['act_secret'\].*training goes on"):
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
            rec.step()
        rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    assert list(run.steps()) == [0, 1, 2]  # the steps are kept, without the failing probe's table
    assert len(run.stat("act_mean", "features.0")[0]) == 3 and len(run.stat("act_zero_frac", "features.0")[0]) == 0


def test_a_run_reads_with_plain_h5py_as_docs_store_format_says(tmp_path):
    import json

    import h5py
    run, model, outs, _ = record(tmp_path, steps=45)
    with h5py.File(str(tmp_path / "r" / "rank-00000.h5"), "r", swmr=True) as f:
        layers = [layer["name"] for layer in json.loads(f.attrs["layers_json"])]
        g = f["probes/act_counts"]
        n = len(g["step"])
        i = layers.index("features.2")
        measured = g["measured"][:n, i].astype(bool)
        steps, zero_frac = g["step"][:n][measured], g["act_zero_frac"][:n, i][measured]
        names = [s.decode() for s in f["scalars/names"][:]]
        m = len(f["scalars/step"])
        loss = f["scalars/values"][:m, names.index("loss")][f["scalars/measured"][:m, names.index("loss")] == 1]
        spec = json.loads(g.attrs["spec"])
    assert spec["cadence"] == "every" and [c["name"] for c in spec["columns"]][0] == "act_zero_frac"
    s, v = run.stat("act_zero_frac", "features.2")
    assert list(steps) == list(s) == list(range(45))
    np.testing.assert_array_equal(zero_frac, v)
    np.testing.assert_array_equal(loss, run.scalar("loss")[1])
