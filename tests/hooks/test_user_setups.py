"""The Recorder in setups its authors did not build for, each a new user's short script compared with plain torch:
inference between training steps, parameters replaced mid-run, two Recorders on one shard, GradScaler's skipped
steps, channels_last, gradient accumulation, modules added after the Recorder, replaced parameters under DDP."""

import contextlib
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tview
from tests.conftest import train
from tview.errors import ConfigError


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@contextlib.contextmanager
def small_run(path: str):
    """small_net(), its data and SGD, recorded every step at `path`, every warning caught: (model, x, y, opt, rec,
    the warnings)."""
    model, (x, y) = small_net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, path, every=1, optimizer=opt) as rec:
            yield model, x, y, opt, rec, caught


def grad_norm(m):
    return float(torch.cat([p.grad.reshape(-1).double() for p in m.parameters(recurse=False)]).norm())


def weight_norm(m):
    return float(torch.cat([p.detach().reshape(-1).double() for p in m.parameters(recurse=False)]).norm())


def keep_outputs(module, outs: list):
    """Plain torch's record of the module's training outputs."""
    module.register_forward_hook(lambda mod, i, o: outs.append(o.detach().clone()) if torch.is_grad_enabled() else None)


def test_a_train_mode_forward_under_no_grad_between_steps_is_not_recorded(tmp_path):
    """`with torch.no_grad(): model(x_val)` without model.eval() (BatchNorm in train mode) is inference: its outputs
    and examples are not the training step's."""
    model, (x, y) = small_net(), data()
    x_val = data(seed=1)[0] * 5 + 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, means = [], []
    keep_outputs(model[0], outs)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
        for _ in range(3):
            outs.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                model(x_val)
            with torch.inference_mode():
                model(x_val)
            means.append(float(torch.cat(outs).mean()))
            opt.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("act_mean", layer="0")[1], means, rtol=1e-5)
    assert list(run.scalar("examples")[1]) == [8, 8, 8]


def test_a_parameter_replaced_mid_run_is_followed_with_a_warning(tmp_path):
    """`layer.weight = nn.Parameter(...)` (or load_state_dict(assign=True)) after training began: the layer's
    statistics are of the new tensor, not of the one it replaced; tview says so once."""
    model, (x, y) = small_net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads, weights = [], []
    w0 = torch.cat([p.detach().reshape(-1).double().clone() for p in model[0].parameters()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
            for step in range(5):
                if step == 3:
                    model[0].weight = nn.Parameter(model[0].weight.detach() * 0.5)
                    opt.param_groups[0]["params"][0] = model[0].weight
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                grads.append(grad_norm(model[0]))
                opt.step()
                weights.append(weight_norm(model[0]))
                rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("grad_norm", layer="0")[1], grads, rtol=1e-5)
    np.testing.assert_allclose(run.stat("weight_norm", layer="0")[1], weights, rtol=1e-5)
    said = [str(w.message) for w in caught if "replaced" in str(w.message)]
    assert len(said) == 1 and "'0'" in said[0] and "step 3" in said[0], said
    w = torch.cat([p.detach().reshape(-1).double() for p in model[0].parameters()])
    _, dist = run.stat("init_distance", layer="0")  # still measured from the weights the run started from
    assert dist[-1] == pytest.approx(float((w - w0).norm() / w0.norm()), rel=1e-5)


def test_a_second_recorder_on_a_shard_another_one_writes_is_refused(tmp_path):
    model, (x, y) = small_net(), data()
    with tview.Recorder(model, str(tmp_path / "r"), every=1) as rec:
        with pytest.raises(ConfigError, match="already writes"):
            tview.Recorder(model, str(tmp_path / "r"), every=1, mode="resume")
        F.cross_entropy(model(x), y).backward()
        rec.step()
    with tview.Recorder(model, str(tmp_path / "r"), every=1, mode="resume") as rec:  # closed: free again
        F.cross_entropy(model(x), y).backward()
        rec.step()
    assert list(tview.open_run(str(tmp_path / "r")).steps(rank=0)) == [0, 1]


def test_steps_a_grad_scaler_skips_are_recorded_as_skipped(tmp_path):
    """fp16 autocast with torch.amp.GradScaler: a step whose gradients overflow is skipped (no optimizer.step()); its
    NaN/Inf gradient statistics are what .grad held, the weights unchanged, and optimizer_skipped says it was skipped
    (1), the others 0."""
    model, (x, y) = small_net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 70, backoff_factor=2.0 ** -60)  # step 0 overflows
    grads, weights = [], []
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="economy") as rec:
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            grads.append(grad_norm(model[4]))
            scaler.step(opt)
            scaler.update()
            weights.append(weight_norm(model[4]))
            rec.step(loss=loss)
    assert not np.isfinite(grads[0]) and np.isfinite(grads[1:]).all()
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("grad_norm", layer="4")[1], grads, rtol=1e-5)
    np.testing.assert_allclose(run.stat("weight_norm", layer="4")[1], weights, rtol=1e-6)
    assert list(run.scalar("optimizer_skipped")[1]) == [1, 0, 0]


class Checkpointed(nn.Module):
    """conv -> relu -> conv under torch.utils.checkpoint, then a linear head."""

    def __init__(self, reentrant: bool):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.relu, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)
        self.reentrant = reentrant

    def body(self, x):
        return self.c2(self.relu(self.c1(x)))

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        x = x.requires_grad_() if self.reentrant else x
        return self.fc(checkpoint(self.body, x, use_reentrant=self.reentrant).flatten(1))


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_records_each_layer_once(tmp_path, reentrant):
    """The layers a checkpoint recomputes in the backward pass are recorded from one forward: their histograms
    count each value once (non-reentrant: the recomputation counted them twice), their statistics are the step's."""
    model, (x, y) = Checkpointed(reentrant), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, means, grads = [], [], []
    keep_outputs(model.c1, outs)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
        for _ in range(2):
            outs.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            means.append(float(outs[0].mean()))
            grads.append(grad_norm(model.c1))
            opt.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    for layer in ("c1", "relu", "c2"):
        assert list(np.asarray(run.histogram("act", layer=layer)[2]).sum(-1)) == [8 * 4 * 8 * 8] * 2, layer
    np.testing.assert_allclose(run.stat("act_mean", layer="c1")[1], means, rtol=1e-5)
    np.testing.assert_allclose(run.stat("grad_norm", layer="c1")[1], grads, rtol=1e-5)


class AuxConv(nn.Module):
    """A layer of the user's own (parameters of its own) that returns (output, aux)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 1, 3, 3) * 0.3)

    def forward(self, x):
        h = F.conv2d(x, self.weight, padding=1)
        return h, h.square().mean()


class KeywordNet(nn.Module):
    """Called as model(x=...) or model(batch={"image": ...}); its first layer returns a tuple, its last a dict."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.aux, self.fc = AuxConv(), nn.Linear(4 * 8 * 8, 10)
        self.head = DictHead()

    def forward(self, x=None, batch=None):
        h, aux = self.aux(x if batch is None else batch["image"])
        return self.head(self.fc(h.flatten(1)))["logits"] + aux


class DictHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return {"logits": x * self.scale}


def test_keyword_inputs_are_counted_and_tuple_outputs_recorded(tmp_path):
    """examples counts a batch passed by keyword or in a dict (it recorded 0); a layer returning (output, aux) has the
    activation statistics of its output (it had none, unsaid); one returning a dict has none, and tview says so."""
    model, (x, y) = KeywordNet(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, means = [], []
    model.aux.register_forward_hook(lambda m, i, o: outs.append(o[0].detach().clone()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
            for step in range(2):
                outs.clear()
                opt.zero_grad()
                out = model(x=x) if step == 0 else model(batch={"image": x})
                F.cross_entropy(out, y).backward()
                means.append(float(outs[0].mean()))
                opt.step()
                rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    assert list(run.scalar("examples")[1]) == [8, 8]
    np.testing.assert_allclose(run.stat("act_mean", layer="aux")[1], means, rtol=1e-5)
    said = [str(w.message) for w in caught if "not a floating-point tensor" in str(w.message)]
    assert len(said) == 1 and "'head'" in said[0] and "dict" in said[0], said


def test_resuming_a_shard_this_process_reads_is_refused_until_the_run_is_closed(tmp_path):
    """It failed at the first step with a StoreWriteError calling the shard corrupt ('cannot be reopened')."""
    model, (x, y) = small_net(), data()
    path = str(tmp_path / "r")
    for attempt in range(2):
        with tview.Recorder(model, path, every=1, mode="resume" if attempt else "new") as rec:
            F.cross_entropy(model(x), y).backward()
            rec.step()
        run = tview.open_run(path)
        assert len(run.steps(rank=0)) == attempt + 1
        if attempt == 0:
            with pytest.raises(ConfigError, match="open for reading"):
                tview.Recorder(model, path, every=1, mode="resume")
        run.close()


def test_a_parametrized_layer_is_one_layer_with_the_parameters_that_train(tmp_path):
    """weight_norm / spectral_norm (torch.nn.utils.parametrizations): the conv's statistics are of what trains in it
    (bias, original0, original1; they were of its bias alone), the parametrization is no layer of its own (it was
    one, its computed weight recorded as an 'activation'), the filters are the weight the conv uses."""
    from torch.nn.utils.parametrizations import spectral_norm
    from torch.nn.utils.parametrizations import weight_norm as weight_normed
    torch.manual_seed(0)
    model = nn.Sequential(weight_normed(nn.Conv2d(1, 4, 3, padding=1)), nn.ReLU(), nn.Flatten(),
                          spectral_norm(nn.Linear(4 * 8 * 8, 10)))
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads, weights, used = [], [], []
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, probe_batch=(x[:2], y[:2])) as rec:
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads.append(float(torch.cat([p.grad.reshape(-1).double() for p in model[0].parameters()]).norm()))
            opt.step()
            weights.append(float(torch.cat([p.detach().reshape(-1).double() for p in model[0].parameters()]).norm()))
            used.append(model[0].weight.detach().numpy().copy())
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    assert run.layers == ["0", "1", "3"]
    np.testing.assert_allclose(run.stat("grad_norm", layer="0")[1], grads, rtol=1e-5)
    np.testing.assert_allclose(run.stat("weight_norm", layer="0")[1], weights, rtol=1e-5)
    step, filters = run.filters("0")
    np.testing.assert_allclose(filters, used[step], rtol=1e-6)


class Fails(nn.Module):
    """Raises in the forward pass when told to (a batch that runs out of memory)."""

    fire = False

    def forward(self, x):
        if self.fire:
            raise RuntimeError("out of memory (simulated)")
        return x


@pytest.mark.parametrize("then_step", [False, True])
def test_a_forward_that_raised_and_was_skipped_leaves_nothing_in_the_next_step(tmp_path, then_step):
    """try: model(x) except RuntimeError: skip the batch (and call rec.step() or not): the outputs the failed forward
    made before it raised are not the step's (they were merged into its activation statistics, its examples
    counted)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Fails(), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, means = [], []
    keep_outputs(model[0], outs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # (it said the hooks were silent, as of a stale compiled model)
        record_with_a_failed_forward(model, opt, str(tmp_path / "r"), then_step, outs, means)
    said = [str(w.message) for w in caught if "tview" in str(w.message)]
    assert len(said) == then_step and all("no backward pass since" in m for m in said)  # step 1 had no gradients
    run = tview.open_run(str(tmp_path / "r"))
    steps, act_mean = run.stat("act_mean", layer="0")
    assert list(steps) == ([0, 2, 3] if then_step else [0, 1, 2])
    np.testing.assert_allclose(act_mean, means, rtol=1e-5)
    assert list(np.asarray(run.histogram("act", layer="0")[2]).sum(-1)) == [2048] * 3
    assert list(run.scalar("examples")[1]) == ([8, 0, 8, 8] if then_step else [8, 8, 8])


def record_with_a_failed_forward(model, opt, path, then_step, outs, means):
    x, y = data()
    with tview.Recorder(model, path, every=1, optimizer=opt, preset="full") as rec:
        for step in range(3):
            if step == 1:
                model[1].fire = True
                with pytest.raises(RuntimeError):
                    model(x * 10 + 5)
                model[1].fire = False
                if then_step:
                    rec.step()
            outs.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            means.append(float(outs[0].mean()))
            opt.step()
            rec.step()


def test_channels_last_with_gradient_accumulation_records_what_plain_torch_computes(tmp_path):
    """A channels_last model and inputs, two backward passes per optimizer step: grad_norm is the accumulated
    .grad's, the activation statistics cover both micro-batches (every value: preset full), examples counts both."""
    model, (x, y) = small_net(), data(16)
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, grads, means, channel_means = [], [], [], []
    keep_outputs(model[0], outs)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
        for _ in range(2):
            outs.clear()
            opt.zero_grad()
            for k in range(2):
                F.cross_entropy(model(x[8 * k:8 * k + 8]), y[8 * k:8 * k + 8]).backward()
            assert outs[0].is_contiguous(memory_format=torch.channels_last)
            grads.append(grad_norm(model[0]))
            means.append(float(torch.cat(outs).mean()))
            channel_means.append(torch.cat(outs).mean((0, 2, 3)).numpy())
            opt.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("grad_norm", layer="0")[1], grads, rtol=1e-5)
    np.testing.assert_allclose(run.stat("act_mean", layer="0")[1], means, rtol=1e-5)
    np.testing.assert_allclose(np.stack(run.stat("act_channel_mean", layer="0")[1]), channel_means, rtol=1e-4,
                               atol=1e-6)
    assert list(run.scalar("examples")[1]) == [16, 16]


@pytest.mark.parametrize("kind", ["depthwise", "conv1d", "conv3d", "mlp"])
def test_other_layer_kinds_record_what_plain_torch_computes(tmp_path, kind):
    torch.manual_seed(0)
    first, x = {"depthwise": (nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.randn(8, 4, 6, 6)),
                "conv1d": (nn.Conv1d(4, 4, 3, padding=1), torch.randn(8, 4, 10)),
                "conv3d": (nn.Conv3d(4, 4, 3, padding=1), torch.randn(8, 4, 3, 3, 3)),
                "mlp": (nn.Linear(4, 4), torch.randn(8, 4))}[kind]
    model = nn.Sequential(first, nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    model(x)
    y = torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, grads, stds = [], [], []
    keep_outputs(model[0], outs)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
        for _ in range(2):
            outs.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads.append(grad_norm(model[0]))
            stds.append(float(outs[0].std()))
            opt.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("grad_norm", layer="0")[1], grads, rtol=1e-5)
    np.testing.assert_allclose(run.stat("act_std", layer="0")[1], stds, rtol=1e-4)
    assert run.stat("weight_norm", layer="0")[1][-1] == pytest.approx(weight_norm(model[0]), rel=1e-6)


def test_a_frozen_batchnorm_in_eval_mode_inside_the_training_forward_is_recorded(tmp_path):
    """Fine-tuning with BatchNorm statistics frozen (the model in train mode, its BatchNorm in eval mode): the
    BatchNorm's output is part of the training forward and has its activation statistics (it had none, unsaid);
    the model in eval mode (validation) is still left out."""
    model, (x, y) = small_net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, means = [], []
    keep_outputs(model[1], outs)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
        for _ in range(2):
            model.train()
            model[1].eval()
            outs.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            means.append(float(outs[0].mean()))
            model.eval()
            model(x * 3)
            opt.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("act_mean", layer="1")[1], means, rtol=1e-5)
    assert list(run.scalar("examples")[1]) == [8, 8]


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_between_the_optimizer_step_and_the_recorders_step(tmp_path, set_to_none):
    """loss.backward(); opt.step(); opt.zero_grad(); rec.step() (zero_grad at the loop's end): the gradient
    statistics are of the gradients optimizer.step() used (they were left out: set_to_none), or, zeroed in place,
    left out and said (they read grad_norm 0 on every step)."""
    grads = []
    with small_run(str(tmp_path / "r")) as (model, x, y, opt, rec, caught):
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
            grads.append(grad_norm(model[0]))
            opt.step()
            opt.zero_grad(set_to_none=set_to_none)
            rec.step()
            assert all((p.grad is None) if set_to_none else not p.grad.any() for p in model.parameters())
    run = tview.open_run(str(tmp_path / "r"))
    said = [str(w.message) for w in caught if "changed in place" in str(w.message)]
    if set_to_none:
        np.testing.assert_allclose(run.stat("grad_norm", layer="0")[1], grads, rtol=1e-5)
        assert not said
    else:
        assert len(run.stat("grad_norm", layer="0")[0]) == 0
        assert len(said) == 1
    assert len(run.stat("weight_norm", layer="0")[0]) == 3


def test_an_embedding_with_sparse_gradients_is_said_and_the_other_layers_recorded(tmp_path):
    """nn.Embedding(sparse=True): every parameter probe failed on its sparse gradient (aten::aminmax on SparseCPU),
    so no layer had gradient or weight statistics; now the embedding is named up front and left out of them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Flatten(), nn.Linear(8 * 5, 10))
    x, y = torch.randint(0, 50, (8, 5)), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
            for _ in range(2):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                grads.append(grad_norm(model[2]))
                opt.step()
                rec.step()
    said = [str(w.message) for w in caught if "tview" in str(w.message)]
    assert len(said) == 1 and "'0'" in said[0] and "sparse" in said[0], said
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("grad_norm", layer="2")[1], grads, rtol=1e-5)
    assert len(run.stat("grad_norm", layer="0")[0]) == 0 and len(run.stat("act_mean", layer="0")[0]) == 1


def test_training_in_eval_mode_is_said_as_such(tmp_path):
    """model.eval() for the whole run (dropout off): no activation statistics (eval forwards are validation's), and
    tview says why; it blamed torch.compile ('compiled code traced before tview's hooks') and dropped dynamo's code."""
    model, (x, y) = small_net(), data()
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
            for _ in range(2):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                rec.step()
    said = [str(w.message) for w in caught if "tview" in str(w.message)]
    assert len(said) == 1 and "eval mode" in said[0] and "compile" not in said[0], said
    assert len(tview.open_run(str(tmp_path / "r")).stat("grad_norm", layer="0")[0]) == 2


def test_an_empty_batch_measures_nothing(tmp_path):
    """A forward of 0 examples (the last, empty batch of a filtered loader): its activation statistics are not
    measured that step (act_zero_frac read 0.0, numpy warned of 0/0 in the writer); nothing is said."""
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
            for n in (8, 0, 8):
                x, y = data(n)
                opt.zero_grad()
                (F.cross_entropy(model(x), y) if n else model(x).sum()).backward()
                opt.step()
                rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    assert list(run.stat("act_zero_frac", layer="2")[0]) == [0, 2]
    assert list(run.scalar("examples")[1]) == [8, 0, 8]


def test_a_copy_of_the_recorded_model_can_be_made_and_is_not_recorded(tmp_path):
    """copy.deepcopy(model) (an EMA model) and torch.save(model) with a Recorder attached raised (TypeError: cannot
    pickle '_io.BufferedReader'; AttributeError: Can't pickle local object); the copy's forwards are not recorded."""
    import copy
    import io
    model, (x, y) = small_net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, means = [], []
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
        ema = copy.deepcopy(model)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        with torch.no_grad():
            expected = model(x)
        keep_outputs(model[0], outs)
        for _ in range(2):
            outs.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            means.append(float(outs[0].mean()))
            F.cross_entropy(ema(x * 3), y).backward()  # the copy, in train mode, autograd on
            opt.step()
            rec.step()
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("act_mean", layer="0")[1], means, rtol=1e-5)
    assert list(run.scalar("examples")[1]) == [8, 8]


class ScaledNet(nn.Module):
    """A learnable temperature held by the model itself (CLIP's logit_scale), beside its layers."""

    def __init__(self):
        super().__init__()
        self.net = small_net()
        self.logit_scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.net(x) * self.logit_scale


def test_parameters_of_the_model_itself_are_said_to_be_left_out(tmp_path):
    """They were left out with nothing said (the model itself is no layer)."""
    model, (x, y) = ScaledNet(), data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, str(tmp_path / "r"), every=1) as rec:
            F.cross_entropy(model(x), y).backward()
            rec.step()
    said = [str(w.message) for w in caught if "tview" in str(w.message)]
    assert len(said) == 1 and "'logit_scale'" in said[0], said
    assert "net.0" in tview.open_run(str(tmp_path / "r")).layers


class SharedNet(nn.Module):
    """nn.Identity, nn.Dropout and a conv called twice (its two calls merged in one row)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Identity(), nn.Dropout(0.0))
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.fc(self.shared(torch.relu(self.shared(x))).flatten(1))


def test_a_shared_module_and_clipped_gradients(tmp_path):
    """A module called twice has the statistics of both calls; gradient statistics are of .grad as the optimizer
    used it, after clip_grad_norm_."""
    model, (x, y) = SharedNet(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, means, grads = [], [], []
    keep_outputs(model.shared, outs)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
        for _ in range(2):
            outs.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            grads.append(grad_norm(model.shared))
            means.append(float(torch.cat([o.reshape(-1) for o in outs]).mean()))
            opt.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    assert run.layers == ["stem.0", "shared", "fc"]
    np.testing.assert_allclose(run.stat("grad_norm", layer="shared")[1], grads, rtol=1e-5)
    np.testing.assert_allclose(run.stat("act_mean", layer="shared")[1], means, rtol=1e-5)
    assert max(grads) < 0.1


def train_changing_at_step_2(tmp_path, change, last_layer):
    """small_net recorded every step for 4 steps, `change(model)` before step 2: (what tview said, the gradient norms
    of `last_layer(model)` by plain torch, the warnings caught)."""
    model, (x, y) = small_net(), data()
    grads = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, str(tmp_path / "r"), every=1) as rec:
            for step in range(4):
                if step == 2:
                    change(model)
                model.zero_grad()
                F.cross_entropy(model(x), y).backward()
                grads.append(grad_norm(last_layer(model)))
                rec.step()
    return [str(w.message) for w in caught if "tview" in str(w.message)], grads, caught


@pytest.mark.parametrize("how", ["attribute", "append"])
def test_a_module_added_after_the_recorder_was_made_is_said_once(tmp_path, how):
    """A head attached after Recorder(...) (model.head = ..., or appended to the Sequential) trains unrecorded: the
    shard's layers are fixed when the Recorder is made. It was unsaid; now the first recorded step that finds it names
    it, once, and the layers found at the start are recorded as before."""
    def add_head(model):
        head = nn.Sequential(nn.ReLU(), nn.Linear(10, 10))
        if how == "attribute":
            model.head = head
        else:
            model.append(head)

    said, grads, caught = train_changing_at_step_2(tmp_path, add_head, lambda model: model[4])
    name = "head" if how == "attribute" else "5"
    assert len(said) == 1 and f"'{name}.0', '{name}.1'" in said[0] and "step 2" in said[0], said
    assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]  # the user's line
    run = tview.open_run(str(tmp_path / "r"))
    assert run.layers == ["0", "1", "2", "4"]
    np.testing.assert_allclose(run.stat("grad_norm", layer="4")[1], grads, rtol=1e-5)


@pytest.mark.parametrize("how", ["insert", "delete"])
def test_layers_renamed_or_taken_out_after_the_recorder_was_made_are_said_once(tmp_path, how):
    """A module inserted into the Sequential before the Linear renames it ('4' becomes '5'), or one deleted ('1',
    the BatchNorm, taken out: '2' becomes '1', '4' becomes '3'). It was unsaid: the run went on under the first
    names. Now the first recorded step after says which layer is now named what, and which left; the Linear is
    still recorded under '4', its gradient norm plain torch's."""
    def change(model):
        model.insert(3, nn.Identity()) if how == "insert" else model.__delitem__(1)

    said, grads, _ = train_changing_at_step_2(tmp_path, change, lambda model: model[-1])
    assert len(said) == 1 and "step 2" in said[0], said
    if how == "insert":
        assert "'4' is now '5'" in said[0] and "'0'" not in said[0].split("renamed")[1], said[0]
    else:
        assert "'2' is now '1'" in said[0] and "'4' is now '3'" in said[0], said[0]
        assert "the layers '1' left it" in said[0], said[0]
    run = tview.open_run(str(tmp_path / "r"))
    assert run.layers == ["0", "1", "2", "4"]
    np.testing.assert_allclose(run.stat("grad_norm", layer="4")[1], grads, rtol=1e-5)


def test_checking_for_added_modules_walks_no_model_on_an_unchanged_step(tmp_path):
    """The check on each recorded step reads a flag and three container lengths, not the model's module tree."""
    from tview.hooks.layers import ModuleWatch, recorded_layers
    from tview.models import SmallResNet
    model = SmallResNet(blocks=3)
    watch = ModuleWatch(model, recorded_layers(model))
    try:
        walked = []
        model.modules = lambda: walked.append(1) or nn.Module.modules(model)
        for _ in range(100):
            assert watch.unrecorded() == []
        assert not walked
        model.stages[0].extra = nn.Conv2d(16, 16, 1)  # a module deep inside: flagged by the registration hook
        assert watch.unrecorded() == ["stages.0.extra"] and walked
    finally:
        watch.remove()


@pytest.mark.parametrize("comm_hook", ["tview's", "the user's"])
def test_a_parameter_replaced_under_ddp_keeps_its_local_gradient_norm(tmp_path, comm_hook):
    """DDP (one gloo process; the Recorder told of two ranks, so it measures local gradients) with the last layer's
    weight replaced at step 2 (find_unused_parameters=True: DDP keeps reducing the old one). local_grad_norm read NaN
    from then on where the user's comm hook made tview hook the parameters (no hook on the new one), and the old
    weight's stale gradient with tview's comm hook; at world size 1 it is the plain gradient norm."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model, (x, y) = small_net(), data()
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        if comm_hook == "the user's":
            ddp.register_comm_hook(dist.group.WORLD, allreduce_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        grads = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # the fallback and the replacement, said
            with tview.Recorder(ddp, str(tmp_path / "r"), every=1, optimizer=opt, rank=0, world_size=2) as rec:
                for step in range(4):
                    if step == 2:
                        model[4].weight = nn.Parameter(model[4].weight.detach() * 0.5)
                        opt.param_groups[0]["params"][-2] = model[4].weight
                    opt.zero_grad()
                    F.cross_entropy(ddp(x), y).backward()
                    grads.append(grad_norm(model[4]))
                    opt.step()
                    rec.step()
    finally:
        dist.destroy_process_group()
    said = [str(w.message) for w in caught if "replaced by new tensors" in str(w.message)]
    assert len(said) == 1 and "'4'" in said[0] and "DDP does not all-reduce" in said[0], said  # the ranks drift apart
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("local_grad_norm", layer="4")[1], grads, rtol=1e-5)
    np.testing.assert_allclose(run.stat("grad_norm", layer="4")[1], grads, rtol=1e-5)


def _gan_step(gen, disc, opt_g, opt_d, x, rec_d=None):
    """One GAN step: the discriminator on real and generated images, then the generator through the discriminator
    (its backward adds to the discriminator's gradients). With rec_d, the discriminator's step() right after its
    optimizer's. Returns (discriminator's first conv gradient norm as its optimizer used it, generator's conv's)."""
    bce = F.binary_cross_entropy_with_logits
    opt_d.zero_grad()
    fake = gen(torch.randn(len(x), 16))
    loss_d = bce(disc(x), torch.ones(len(x), 1)) + bce(disc(fake.detach()), torch.zeros(len(x), 1))
    loss_d.backward()
    g_d = grad_norm(disc[0])
    opt_d.step()
    if rec_d is not None:
        rec_d.step(loss=loss_d)
    opt_g.zero_grad()
    bce(disc(fake), torch.ones(len(x), 1)).backward()
    g_g = grad_norm(gen[2])
    opt_g.step()
    return g_d, g_g


def test_a_gan_records_generator_and_discriminator_each_in_its_own_run(tmp_path):
    """Two models, two optimizers, two Recorders in one process: each run holds its own model's gradients as its
    optimizer used them (the generator's backward through the discriminator changes the discriminator's gradients
    after its optimizer stepped: its step() comes right after that), and the discriminator counts the examples of its
    forwards between its step() calls (the generator's pass through it falls in its next step). Said where the
    discriminator's step() comes after the generator's backward instead."""
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(16, 64), nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 1, 3, padding=1), nn.Tanh())
    disc = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 64, 1))
    opt_g, opt_d = torch.optim.Adam(gen.parameters(), 1e-3), torch.optim.Adam(disc.parameters(), 1e-3)
    x = data()[0]
    plain_d, plain_g = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(gen, str(tmp_path / "g"), every=1, optimizer=opt_g) as rec_g, \
                tview.Recorder(disc, str(tmp_path / "d"), every=1, optimizer=opt_d) as rec_d:
            for _ in range(3):
                g_d, g_g = _gan_step(gen, disc, opt_g, opt_d, x, rec_d)
                plain_d.append(g_d), plain_g.append(g_g)
                rec_g.step()
    assert not [w for w in caught if "tview" in str(w.message)]
    run_g, run_d = tview.open_run(str(tmp_path / "g")), tview.open_run(str(tmp_path / "d"))
    np.testing.assert_allclose(run_g.stat("grad_norm", layer="2")[1], plain_g, rtol=1e-5)
    np.testing.assert_allclose(run_d.stat("grad_norm", layer="0")[1], plain_d, rtol=1e-5)
    assert list(run_d.scalar("examples")[1]) == [2 * len(x)] + [3 * len(x)] * 2
    assert list(run_g.scalar("examples")[1]) == [len(x)] * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(disc, str(tmp_path / "late"), every=1, optimizer=opt_d) as rec_d:
            _gan_step(gen, disc, opt_g, opt_d, x)
            rec_d.step()
    said = [str(w.message) for w in caught if "tview" in str(w.message)]
    assert len(said) == 1 and "another backward pass" in said[0], said


class Sleeps(nn.Module):
    """A user's layer that takes `seconds` in its forward (its own work, not tview's)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_tview_records_its_own_time_and_not_the_users(tmp_path):
    """tview_time is the time in tview's code on the training thread (here made 30 ms longer in its end-of-forward
    statistics from step 5 on), never the user's (a layer that sleeps 150 ms); tview_writer_cpu is the writer
    thread's CPU (made 20 ms longer a record, in numpy calls that let go of the GIL: a writer spinning in Python
    would make every torch call of the training thread wait for the GIL, inside tview's time or the user's), and
    the writer's own split of it counts those 20 ms in finalize."""
    model = nn.Sequential(small_net(), Sleeps(0.15))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt)
    reduce_kept, activation_rows = rec._reduce_kept, rec._activation_rows
    square = np.random.default_rng(0).random((128, 128))

    def slow_reduce(*args, **kwargs):
        time.sleep(0.03)
        return reduce_kept(*args, **kwargs)

    def busy_activation_rows(*args, **kwargs):
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            square @ square
        return activation_rows(*args, **kwargs)

    rec._activation_rows = busy_activation_rows
    x, y = data()
    cpu0 = time.process_time()
    for step in range(10):
        if step == 5:
            rec._reduce_kept = slow_reduce
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rec.step()
    rec.close()
    cpu = time.process_time() - cpu0
    run = tview.open_run(str(tmp_path / "r"))
    steps, own = run.scalar("tview_time")
    _, writer = run.scalar("tview_writer_cpu")
    assert list(steps) == list(range(10))
    added = np.median(own[5:]) - np.median(own[2:5])  # (steps 0 and 1: the first record's writes, waited for once)
    assert 0.025 <= added <= 0.06, own  # tview's added 30 ms, counted once
    assert np.all(own < 0.15 + 0.03), own  # never the user's 150 ms
    assert np.all(writer >= 0.02) and writer.sum() <= cpu, (writer, cpu)
    split = rec._writer.cpu_split  # benchmarks/writer_cpu.py's figures: the busy 20 ms fall in finalize
    assert split["records"] == 10 and 0.2 <= split["finalize"] <= writer.sum() + 0.01, (split, writer.sum())
    assert 0 < split["write"] + split["flush"] < split["finalize"], split


def test_tviews_share_on_the_overview_is_its_time_over_the_time_between_records(tmp_path):
    """Every 2nd step recorded, each step 10 ms of the user's, tview's step() made 20 ms longer on recorded steps:
    tview takes about 20 of every 40 ms. The Overview's share (from the rank summary; `tview info` shows it too)
    agrees with the sums of tview_time over the wall time between records, read from the shard."""
    model = nn.Sequential(small_net(), Sleeps(0.01))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = tview.Recorder(model, str(tmp_path / "r"), every=2, optimizer=opt)
    param_results = rec._param_results

    def slow_param_results(*args, **kwargs):
        time.sleep(0.02)
        return param_results(*args, **kwargs)

    rec._param_results = slow_param_results
    train(model, rec, 24, *data(), opt=opt)
    rec.close()
    from tview.render import summaries
    run = tview.open_run(str(tmp_path / "r"))
    _, own = run.scalar("tview_time")
    _, wall = run.scalar("wall_time")
    whole = own[1:].sum() / (wall[-1] - wall[0])
    share = summaries.tview_shares(summaries.compact(run.rank_summaries()))[0]
    assert 0.2 <= whole <= 0.8 and abs(share - whole) < 0.15, (share, whole)  # (step_time's share read 0.96)
    from tview.cli import info_text
    assert f"{share:.1%}" in info_text(str(tmp_path / "r"))  # `tview info` shows the same share


def test_lazy_layers_not_made_yet_are_refused_with_what_to_do(tmp_path):
    """Recorder() right after building a model of lazy modules raised torch's "uninitialized parameter" error from
    inside tview; it is a ConfigError that names the layers and says to run one forward pass first (then it works)."""
    model = nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    x, y = data()
    with pytest.raises(ConfigError, match=r"'0', '3' have lazy parameters.*one forward pass"):
        tview.Recorder(model, str(tmp_path / "r"), every=1)
    model(x)
    with tview.Recorder(model, str(tmp_path / "r2"), every=1) as rec:
        F.cross_entropy(model(x), y).backward()
        rec.step()
    recorded = tview.open_run(str(tmp_path / "r2")).stat("grad_norm", layer="0")[1]
    np.testing.assert_allclose(recorded, [grad_norm(model[0])], rtol=1e-5)


@pytest.mark.parametrize("where", ["model", "child"])
def test_a_torchscript_model_or_layer_is_refused_naming_it(tmp_path, where):
    """torch.jit.script'ed code runs no forward hook added after scripting: Recorder() on a scripted model raised an
    AttributeError from inside tview ('OrderedModuleDict' has no 'get'); now a ConfigError names the scripted module
    and what to do, and nothing is written."""
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    model = nn.Sequential(torch.jit.script(stem) if where == "child" else stem, nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    model = torch.jit.script(model) if where == "model" else model
    name = "the model" if where == "model" else "'?0'?"
    with pytest.raises(ConfigError, match=rf"TorchScript modules \({name} made by torch.jit.*eager model"):
        tview.Recorder(model, str(tmp_path / "r"), every=1)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


class Quantizer(nn.Module):
    """A vector quantizer: (integer codes, the quantized vectors), or the codes alone."""

    def __init__(self, codes_only: bool = False):
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(8, 4))
        self.codes_only = codes_only

    def forward(self, h):
        codes = torch.cdist(h.mean((2, 3)), self.codebook).argmin(1)
        return codes if self.codes_only else (codes, self.codebook[codes])


class QuantNet(nn.Module):
    def __init__(self, codes_only: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.quant, self.fc = nn.Conv2d(1, 4, 3, padding=1), Quantizer(codes_only), nn.Linear(4, 10)

    def forward(self, x):
        h = self.conv(x)
        out = self.quant(h)
        q = self.quant.codebook[out] if self.quant.codes_only else out[1]
        return self.fc(h.mean((2, 3)) + q), out


@pytest.mark.parametrize("codes_only", [False, True], ids=["codes-and-vectors", "codes-only"])
def test_a_layer_with_integer_outputs_leaves_the_other_layers_statistics_alone(tmp_path, codes_only):
    """A layer led by an integer tensor (a quantizer's codes), in a model that returns a tuple: the NaN scan met the
    integer codes and activation statistics stopped for every layer, for good. The layer's first floating-point output
    is its activation (the quantized vectors); integer codes alone have none, said once."""
    model, (x, y) = QuantNet(codes_only), data(4)
    outs, quantized = [], []
    keep_outputs(model.conv, outs)
    if not codes_only:
        model.quant.register_forward_hook(lambda m, i, o: quantized.append(o[1].detach().clone()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, str(tmp_path / "r"), every=1, preset="full") as rec:
            for _ in range(2):
                model.zero_grad()
                F.cross_entropy(model(x)[0], y).backward()
                rec.step()
    said = [str(w.message) for w in caught if "tview" in str(w.message)]
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("act_mean", layer="conv")[1], [float(o.mean()) for o in outs], rtol=1e-5)
    assert list(run.stat("act_nan", layer="conv")[1]) == [0, 0]
    if codes_only:
        assert len(said) == 1 and "'quant' returns a torch.int64 tensor" in said[0], said
        assert len(run.stat("act_mean", layer="quant")[0]) == 0
    else:
        assert not said, said
        np.testing.assert_allclose(run.stat("act_mean", layer="quant")[1], [float(q.mean()) for q in quantized],
                                   rtol=1e-5)


class FrozenBackbone(nn.Module):
    """Fine-tuning: the backbone runs under torch.no_grad() inside the training forward, the head trains."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

    def forward(self, x):
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)


def test_a_backbone_run_under_no_grad_inside_the_training_forward_is_recorded(tmp_path):
    """Its activations were dropped with nothing said (a NaN born there was blamed on the head). Inside the model's
    training forward a no_grad part counts; a no_grad forward of the whole model between steps still does not."""
    model, (x, y) = FrozenBackbone(), data(4)
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    outs = []
    keep = model.backbone[0].register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()))
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                model(x)  # an evaluation between steps, in train mode: not the step's
            rec.step()
    keep.remove()
    run = tview.open_run(str(tmp_path / "r"))
    training = [float(outs[0].mean()), float(outs[2].mean())]  # (outs[1], outs[3]: the evaluations)
    np.testing.assert_allclose(run.stat("act_mean", layer="backbone.0")[1], training, rtol=1e-5)
    assert list(run.scalar("examples")[1]) == [4, 4]


@pytest.mark.parametrize("comm_hook", ["tview's", "the user's"])
def test_local_gradient_norms_under_a_grad_scaler_are_of_the_unscaled_gradient(tmp_path, comm_hook):
    """GradScaler under DDP (one gloo process, the Recorder told of two ranks): DDP's buckets, where tview reads each
    rank's gradient before the all-reduce, hold the scaled gradient, and local_grad_norm read 1024x (the scale) the
    gradient grad_norm reads. Given the scaler, tview divides by the scale the backward used (it doubles every second
    step here: scaler.update() changes it before rec.step() runs). At world size 1 the local gradient is the
    gradient: plain torch's norm after unscale_."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model, (x, y) = small_net(), data()
        ddp = nn.parallel.DistributedDataParallel(model)
        if comm_hook == "the user's":
            ddp.register_comm_hook(dist.group.WORLD, allreduce_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
        grads, scales = [], []
        with tview.Recorder(ddp, str(tmp_path / "r"), every=1, optimizer=opt, rank=0, world_size=2,
                            scaler=scaler) as rec:
            for _ in range(4):
                opt.zero_grad()
                scales.append(float(scaler.get_scale()))
                scaler.scale(F.cross_entropy(ddp(x), y)).backward()
                scaler.unscale_(opt)
                grads.append(grad_norm(model[0]))
                scaler.step(opt)
                scaler.update()
                rec.step()
    finally:
        dist.destroy_process_group()
    assert scales == [1024, 1024, 2048, 2048]
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("local_grad_norm", layer="0")[1], grads, rtol=1e-5)
    np.testing.assert_allclose(run.stat("grad_norm", layer="0")[1], grads, rtol=1e-5)
    with pytest.raises(ConfigError, match="scaler must be the torch.amp.GradScaler.*got float"):
        tview.Recorder(small_net(), str(tmp_path / "r2"), scaler=1024.0)


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_a_step_with_no_backward_pass_since_the_last_does_not_repeat_its_gradients(tmp_path, monkeypatch, device_path):
    """rec.step() called twice for one optimizer step, then in a loop that does not train: the gradients are those
    the first call read, unchanged; their statistics are left out of the later steps (they would be step 0's under
    another number) and said once; training again records them again, as plain torch computes them."""
    from tview.hooks import params as P
    monkeypatch.setattr(P, "FORCE_DEVICE_PATH", device_path)
    grads = []
    with small_run(str(tmp_path / "r")) as (model, x, y, opt, rec, caught):
        for train_now in (True, False, False, True):
            if train_now:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                grads.append(grad_norm(model[0]))
                opt.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    steps, norms = run.stat("grad_norm", layer="0")
    assert list(steps) == [0, 3]
    np.testing.assert_allclose(norms, grads, rtol=1e-5)
    assert list(run.stat("weight_norm", layer="0")[0]) == [0, 1, 2, 3]
    said = [str(w.message) for w in caught if "no backward pass since" in str(w.message)]
    assert len(said) == 1 and "step 1 came with the gradients that step 0 read" in said[0]
