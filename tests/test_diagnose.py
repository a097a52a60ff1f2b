"""tview.diagnose: detectors on made-up series with known answers, and findings on real recorded runs."""

import json
import subprocess

import numpy as np
import pytest

from tview.diagnose import KINDS, detect, diagnose, noise
from tview.diagnose.checks import common, gradients
from tview.diagnose.checks import dead as dead_checks
from tview.diagnose.findings import make, worst_first

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import tview  # noqa: E402
from tests.conftest import PY, REPO, TinyCNN, make_data, python_env  # noqa: E402


# -- detectors on made-up series -------------------------------------------------------------
def test_trailing_streak_and_first_run():
    assert detect.trailing_streak([0, 1, 0, 1, 1]) == 3
    assert detect.trailing_streak([1, 1]) == 0
    assert detect.trailing_streak([1, 0]) is None
    assert detect.first_run([0, 1, 0, 1, 1, 1], 2) == 3
    assert detect.first_run([0, 0, 1], 3) == 2  # a shorter run ending the series counts
    assert detect.first_run([0, 0], 1) is None


def test_rise_start_dates_a_ramp_where_it_left_its_level_not_where_it_crossed_the_jump_factor():
    rng = np.random.default_rng(0)
    v = 1.0 + 0.2 * rng.random(100)
    v[40] = 4.0  # a lone outlier well before: not part of the ramp
    v[60:] = [5.0, 12.0, 30.0, 80.0] + [100.0] * 36  # left its level at 60 (5x), crossed 10x at 61
    k = detect.jump_onset(v, 10.0, sustain=1)
    assert k == 61
    assert detect.rise_start(v, k, 3.0) == 60
    assert detect.rise_start(v, 60, 3.0) == 60  # a jump with no ramp before it stays where it is
    v[58:60] = [3.5, 4.0]  # the ramp began at 58
    assert detect.rise_start(v, 61, 3.0) == 58
    v[59] = np.nan  # a gap in it: the walk stops there
    assert detect.rise_start(v, 61, 3.0) == 60


def test_jump_onset_finds_the_first_step_of_a_sustained_jump_and_skips_nan():
    rng = np.random.default_rng(0)
    g = np.exp(rng.normal(size=100) * 0.3)
    g[60:] *= 1e4
    g[30] = np.nan
    assert detect.jump_onset(g, 100) == 60
    assert detect.jump_onset(g[:60], 100) is None
    low = np.exp(rng.normal(size=100) * 0.3)
    low[70:] *= 1e-6
    assert detect.jump_onset(low, 1e3, sustain=5, up=False) == 70
    spike = np.ones(50)
    spike[20] = 1e4  # one spike is not sustained
    assert detect.jump_onset(spike, 100, sustain=2) is None


def test_drift_onset_sees_slow_growth_the_jump_test_misses():
    g = np.logspace(0, 5, 100)
    assert detect.jump_onset(g, 100) is None
    k = detect.drift_onset(g, 1e3)
    assert k is not None and g[k - 2] > 1e3 * 0.5  # where the rolling median passes 1000x the early level


def test_held_finds_a_noisy_step_and_nothing_in_noise():
    rng = np.random.default_rng(1)
    flags = rng.random(200) < 0.3  # noise before: 30% of the steps flagged
    flags[120:] = rng.random(80) < 0.97
    assert 120 - 19 * 0.4 <= detect.first_held(detect.held(flags, 19, 0.7), 20) <= 120
    assert detect.first_held(detect.held(rng.random(200) < 0.3, 19, 0.7), 20) is None


def test_mean_shift_splits_at_the_largest_jump():
    x = np.r_[np.zeros(40), np.full(20, 1.0), np.full(40, 3.0)]
    assert detect.mean_shift(x, 1, 99) == 60


def test_lower_median_and_disagreeing_ranks():
    m = np.array([[1.0, 5.0], [2.0, np.nan], [9.0, 1.0]])
    assert list(detect.lower_median(m)) == [2.0, 1.0]
    v = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0 + 1e-12], [1.0, 2.0, 3.0]])
    differs, odd = detect.disagreeing(v, 0.0)
    assert list(differs) == [False, False, True] and list(odd[:, 2]) == [False, True, False]
    differs, _ = detect.disagreeing(v, 1e-9)  # within tolerance
    assert not differs.any()
    nan = np.array([[np.nan], [np.nan]])
    assert not detect.disagreeing(nan, 0.0)[0].any()


def test_stuck_channels_must_stay_to_the_end():
    z = np.zeros((50, 4), dtype=bool)
    z[:, 1] = True        # stuck all along
    z[30:, 2] = True      # stuck from row 30
    z[:40, 3] = True      # recovered
    z[48:, 0] = True      # only the last 2 rows: too short (at least 10% and 3 rows)
    assert common.stuck_channels(z) == {1: 0, 2: 30}


def test_gradient_onsets_name_the_layer_nearest_the_loss():
    steps = np.arange(100)
    g = np.ones((100, 4))
    g[60:, :3] *= 1e4   # layers 0, 1, 2 explode together at step 60 (the fault is in layer 2's output)
    g[:, 3] = 0.5
    found = gradients.gradient_onsets(steps, g, ["a", "b", "c", "d"], [0, 1, 2, 3], rank=None)
    assert [(f.kind, f.layer, f.step) for f in found] == [("exploding_gradients", "c", 60)]


def test_findings_are_json_ready_and_ordered_worst_first():
    a = make("slow_rank", "slow", rank=1, step=5)
    b = make("nonfinite", "nan", rank=0, layer="conv1", step=9, tensor="activation")
    c = make("exploding_gradients", "big", layer="fc", step=3)
    d = make("rank_missing", "gone", rank=3)
    assert [f.kind for f in worst_first([a, b, c, d])] == ["exploding_gradients", "nonfinite", "rank_missing",
                                                            "slow_rank"]
    out = json.loads(json.dumps(b.to_dict()))
    assert {"kind", "rank", "layer", "step", "tensor", "channels", "message"} <= set(out)
    assert out["severity"] == "error" and b["layer"] == "conv1"
    assert make("dead_filters", "x").tensor == "activation"
    with pytest.raises(ValueError, match="unknown finding kind"):
        make("bogus", "x")
    assert all(sev in ("error", "warning") for sev, _, _ in KINDS.values())


def test_noise_scale_recovers_a_known_value_and_says_why_where_undefined():
    b, world, steps = 16, 4, 50
    g2, trace = 4.0, 800.0
    local = np.full((world, steps), g2 + trace / b)
    big = np.full(steps, g2 + trace / (b * world))
    local[1, 10] = np.nan   # one rank did not record step 10
    big[20] = np.inf
    values, why = noise.noise_scale_from_norms(local, big, b, world, smoothing=0.0)
    assert values[0] == pytest.approx(trace / g2)
    assert np.isnan(values[10]) and why[10] == noise.WHY_NO_LOCAL
    assert np.isnan(values[20]) and why[20] == noise.WHY_NONFINITE
    ns = noise.NoiseScale(np.arange(steps) * 10, values, why)
    assert ns.undefined_spans() == [(100, 100, noise.WHY_NO_LOCAL), (200, 200, noise.WHY_NONFINITE)]
    assert ns.gaps() == {noise.WHY_NO_LOCAL: 1, noise.WHY_NONFINITE: 1}
    same = np.full(steps, 1.0)  # every rank's gradient equals the all-reduced one: no noise
    values, why = noise.noise_scale_from_norms(np.stack([same] * world), same, b, world, smoothing=0.0)
    assert np.isnan(values).all() and set(why) == {noise.WHY_TRACE}
    assert noise.NoiseScale(np.arange(steps), values, why).undefined_spans() == [(0, steps - 1, noise.WHY_TRACE)]


# -- real recorded runs (ranks recorded side by side in this process, no DDP) ------------------
def _record(tmp_path, ranks=2, steps=12, fault=None, name="run", setup=None):
    """Train one TinyCNN copy per rank as data parallelism does, each with its own Recorder(rank=r): each rank its own
    batches, the gradients averaged over the copies (the all-reduce) before the optimizer steps; setup(rank, model)
    runs before the Recorder is made (hooks placed there run before its hooks); fault(rank, step, model) may change
    a copy between the all-reduce and the optimizer step. Returns the run folder and the recorders."""
    out = str(tmp_path / name)
    data = [make_data(16, seed=r) for r in range(ranks)]
    models, opts, recs = [], [], []
    for r in range(ranks):
        torch.manual_seed(0)
        m = TinyCNN()
        if setup is not None:
            setup(r, m)
        models.append(m)
        opts.append(torch.optim.SGD(m.parameters(), lr=0.05))
        recs.append(tview.Recorder(m, out, every=1, preset="full", rank=r, world_size=ranks, optimizer=opts[-1]))
    for step in range(steps):
        losses = []
        for r in range(ranks):
            opts[r].zero_grad()
            losses.append(F.cross_entropy(models[r](data[r][0]), data[r][1]))
            losses[-1].backward()
        _all_reduce(models)
        for r in range(ranks):
            if fault is not None:
                fault(r, step, models[r])
            opts[r].step()
            recs[r].step(loss=losses[r])
    return out, recs


def _all_reduce(models) -> None:
    """Every copy's gradients := their mean over the copies (the same bits on each: replicas stay equal)."""
    for params in zip(*(m.parameters() for m in models)):
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            mean = torch.stack(grads).mean(0)
            for p in params:
                p.grad = mean.clone()


def _close(recs):
    for rec in recs:
        rec.close()


@pytest.mark.slow
def test_a_clean_run_gives_no_finding_and_the_cli_says_so_in_one_line(tmp_path):
    out, recs = _record(tmp_path)
    _close(recs)
    assert diagnose(out) == []
    cli = subprocess.run([PY, "-m", "tview.cli", "diagnose", out], capture_output=True, text=True, cwd=REPO,
                         env=python_env(), timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip().count("\n") == 0 and cli.stdout.startswith("no findings")


@pytest.mark.slow
def test_replicas_that_differ_are_named_at_the_step_and_layer(tmp_path):
    def nudge(rank, step, model):
        if rank == 1 and step == 5:
            with torch.no_grad():
                model.conv2.weight[0, 0, 0, 0] += 1e-3
    out, recs = _record(tmp_path, fault=nudge)
    _close(recs)
    found = diagnose(out)
    f = found[0]
    assert (f.kind, f.layer, f.step, f.tensor) == ("replicas_differ", "conv2", 5, "weight")
    assert f.rank is None  # two ranks: which one is wrong cannot be told
    cli = subprocess.run([PY, "-m", "tview.cli", "diagnose", out, "--json"], capture_output=True, text=True,
                         cwd=REPO, env=python_env(), timeout=120)
    listed = json.loads(cli.stdout)
    assert listed[0]["kind"] == "replicas_differ" and listed[0]["layer"] == "conv2" and listed[0]["step"] == 5


def test_nan_in_one_ranks_activations_names_rank_module_and_step(tmp_path):
    step = {"now": 0}

    def poison(rank, model):  # from step 4 on rank 1, a NaN out of conv2 (placed before the Recorder's hooks)
        def hook(module, inputs, output):
            if step["now"] < 4:
                return None
            output = output.clone()
            output.view(-1)[0] = float("nan")
            return output
        if rank == 1:
            model.conv2.register_forward_hook(hook)

    def count(rank, s, model):
        step["now"] = s + 1 if rank == 1 else step["now"]  # the next forward is step s + 1
    out, recs = _record(tmp_path, fault=count, setup=poison)
    _close(recs)
    f = diagnose(out)[0]
    assert (f.kind, f.rank, f.layer, f.step, f.tensor) == ("nonfinite", 1, "conv2", 4, "activation")


def test_a_nan_first_seen_after_unrecorded_steps_says_which_steps_it_could_have_come_in(tmp_path):
    """Recorded every 3rd step, a NaN out of conv2 from step 4: the first record that shows it is step 6, and the
    finding says so rather than presenting step 6 as where it came (a helper's every=5 runs read as exact)."""
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data(16)
    now = {"step": 0}

    def poison(module, inputs, output):
        if now["step"] >= 4:
            output = output.clone()
            output.view(-1)[0] = float("nan")
        return output
    model.conv2.register_forward_hook(poison)
    out = str(tmp_path / "r")
    with tview.Recorder(model, out, every=3) as rec:
        for step in range(8):
            now["step"] = step
            F.cross_entropy(model(x), y).backward()
            rec.step()
    f = diagnose(out)[0]
    assert (f.kind, f.layer, f.step, f.tensor) == ("nonfinite", "conv2", 6, "activation")
    assert "first at step 6 (first seen there: it came after step 3, the record before)" in f.message, f.message


def test_weights_turned_nan_by_the_last_recorded_step_are_named(tmp_path):
    """The optimizer step writes a NaN into conv2's weight on the last step the job records (the job stops there: no
    later forward shows it): the shard keeps that first step, and diagnose names it, the layer and the weights."""
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = str(tmp_path / "r")
    with tview.Recorder(model, out, every=1, optimizer=opt) as rec:
        for step in range(5):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if step == 4:
                with torch.no_grad():
                    model.conv2.weight[0, 0, 0, 0] = float("nan")
            rec.step(loss=loss)
    with tview.open_run(out) as run:
        where = run.rank_summaries()[0]["first_nonfinite"]
        assert where["layers"] == {"conv2": 4} and where["tensors"]["weight"] == {"conv2": 4}
        f = diagnose(run)[0]
    assert (f.kind, f.rank, f.layer, f.step, f.tensor) == ("nonfinite", 0, "conv2", 4, "weight"), f.message


def test_a_rank_that_stopped_without_closing_is_named(tmp_path):
    out, recs = _record(tmp_path, steps=6)
    recs[0].close()
    recs[1].flush()
    try:
        found = diagnose(out)
        assert [(f.kind, f.rank, f.step) for f in found] == [("rank_stopped", 1, 6)]
    finally:
        recs[1].close()


def test_frozen_channels_are_named_when_grad_channel_norm_is_recorded(tmp_path):
    def freeze(rank, step, model):
        if step >= 4:
            model.conv2.weight.grad[2] = 0  # this channel's gradient stays zero; its activations live on
            model.conv2.bias.grad[2] = 0
    out, recs = _record(tmp_path, fault=freeze, steps=16)
    _close(recs)
    run = tview.open_run(out)
    if "grad_channel_norm" not in run.channel_stat_names():
        pytest.skip("this store records no grad_channel_norm")
    frozen = [f for f in diagnose(run) if f.kind == "frozen_filters"]
    assert [(f.layer, f.channels, f.step, f.rank) for f in frozen] == [("conv2", [2], 4, None)]


def test_noise_scale_of_a_single_rank_run_says_why_it_is_undefined(tmp_path):
    out, recs = _record(tmp_path, ranks=1, steps=3)
    _close(recs)
    ns = noise.noise_scale(tview.open_run(out))
    assert ns.reason.startswith("needs 2 or more readable ranks") and len(ns.b_simple) == 0


def test_a_rank_far_behind_the_others_lags(tmp_path):
    out = str(tmp_path / "lag")
    x, y = make_data(8)
    for rank, steps in ((0, 40), (1, 10)):  # ranks that do not wait for each other: rank 1 recorded 10 steps only
        torch.manual_seed(0)
        m = TinyCNN()
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        with tview.Recorder(m, out, every=1, preset="economy", rank=rank, world_size=2, optimizer=opt) as rec:
            for _ in range(steps):
                opt.zero_grad()
                loss = F.cross_entropy(m(x), y)
                loss.backward()
                opt.step()
                rec.step(loss=loss)
    lags = [f for f in diagnose(out) if f.kind == "rank_lags"]
    assert [(f.rank, f.step, f.tensor) for f in lags] == [(1, 10, "time")]


@pytest.mark.slow
def test_the_cli_on_a_folder_that_is_not_a_run_says_so(tmp_path):
    cli = subprocess.run([PY, "-m", "tview.cli", "diagnose", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                         env=python_env(), timeout=120)
    assert cli.returncode == 2 and str(tmp_path) in cli.stderr and "Traceback" not in cli.stderr


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from tview.demo import run_demo
    path = str(tmp_path_factory.mktemp("ddp") / "demo")
    run_demo(path, ranks=2, steps=24, every=1, snapshot_every=10, batch=16)
    return path


@pytest.mark.slow
def test_noise_scale_of_a_real_ddp_run_gives_per_layer_estimates_and_the_critical_batch(ddp_run):
    ns = noise.noise_scale(tview.open_run(ddp_run))
    assert ns.reason is None and ns.batch > 0 and len(ns.steps) > 0
    assert set(ns.layers) <= set(tview.open_run(ddp_run).layers) and ns.layers
    assert ns.critical_batch is None or ns.critical_batch > 0
    assert all(bool(w) != np.isfinite(v) for v, w in zip(ns.b_simple, ns.why))  # a reason exactly where undefined


def test_dead_relu_units_after_a_linear_layer_are_named_as_dead_units(tmp_path):
    """A ReLU after a Linear layer with a quarter of its units never firing is named (dead_units, the units of that
    Linear layer): the overview's one health list covers the fully connected part as well as the conv filters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.ReLU(), torch.nn.Linear(12, 10))
    with torch.no_grad():
        model[1].bias[[2, 7, 9]] = -1e3  # these units stay below zero for every input: dead from the start
    x, y = make_data(16)
    out = str(tmp_path / "fc")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tview.Recorder(model, out, every=1, preset="full", optimizer=opt) as rec:
        for _ in range(12):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.step(loss=loss)
    dead = [f for f in diagnose(out) if f.kind.startswith("dead")]
    assert [(f.kind, f.channels, f.step) for f in dead] == [("dead_units", [2, 7, 9], 0)], dead
    assert "units of" in dead[0].message and dead[0].layer is not None
    # two of twelve (17%) are what a healthy ReLU layer may have: below DEAD_UNITS_SHARE, not named
    run = tview.open_run(out)
    i = run.layers.index(dead[0].layer)
    maker = next(j for j in range(i, -1, -1) if run.layer_info[j]["type"] == "Linear")
    assert not dead_checks.worth_naming(run, i, maker, {2: 0, 7: 0})
    assert dead_checks.worth_naming(run, i, maker, {2: 0, 7: 0, 9: 0})


def test_a_frozen_layer_is_said_with_the_step_its_weights_stopped(tmp_path):
    def freeze_conv1(rank, model):  # requires_grad off from the start (fine-tuning's frozen stem)
        for p in model.conv1.parameters():
            p.requires_grad_(False)
    out, recs = _record(tmp_path, steps=30, setup=freeze_conv1, name="frozen")
    _close(recs)
    found = [f for f in diagnose(out) if f.kind == "frozen_layer"]
    assert [(f.layer, f.step, f.rank) for f in found] == [("conv1", 0, None)]

    def stop_fc(rank, step, model):  # fc's gradient dropped from step 20 on: the optimizer no longer moves it
        if step >= 20:
            model.fc.weight.grad = None
            model.fc.bias.grad = None
    out, recs = _record(tmp_path, steps=40, fault=stop_fc, name="stopped")
    _close(recs)
    found = [f for f in diagnose(out) if f.kind == "frozen_layer"]
    assert [(f.layer, f.step) for f in found] == [("fc", 20)]


class RegisteredBackwards(torch.nn.Module):
    """Modules registered in the reverse of the order the forward pass runs them."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def test_the_first_nonfinite_layer_is_first_in_the_order_the_forward_pass_ran(tmp_path):
    torch.manual_seed(0)
    model, (x, y) = RegisteredBackwards(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
        for step in range(4):
            batch = x.clone()
            if step == 2:
                batch[3, 0, 2, 2] = float("nan")  # every layer's output holds NaN from here
            opt.zero_grad()
            loss = F.cross_entropy(model(batch), y)
            loss.backward()
            opt.step()
            rec.step(loss=loss)
    run = tview.open_run(str(tmp_path / "r"))
    assert run.layers[:3] == ["fc", "conv2", "conv1"]  # the model's module list
    assert [layer.get("forward") for layer in run.layer_info][:3] == [2, 1, 0]  # the order the hooks fired
    first = diagnose(run)[0]
    assert (first.kind, first.layer, first.step) == ("nonfinite", "conv1", 2)


def _scaled_run(out: str, steps: int, overflow_at=(), nan_from=None, resume_at=None) -> list[int]:
    """TinyCNN trained in fp16 autocast with torch.amp.GradScaler on the CPU: at the steps in `overflow_at` a gradient
    of conv1 overflows (Inf: the scaler skips the step and backs off, its normal work); from step `nan_from` on,
    conv2's weight gradient is NaN on every step (a real fault: every step skipped); at step `resume_at` the
    Recorder is closed and a new one resumes the run (a job restarted). Returns the steps the scaler skipped, read
    from plain torch (the weights unchanged)."""
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    skipped = []
    parts = [(0, resume_at or steps, "new")] + ([(resume_at, steps, "resume")] if resume_at else [])
    for first, end, mode in parts:
        with tview.Recorder(model, out, every=1, optimizer=opt, mode=mode) as rec:
            _scaled_steps(model, opt, scaler, rec, (x, y), range(first, end), overflow_at, nan_from, skipped)
    return skipped


def _scaled_steps(model, opt, scaler, rec, data, steps, overflow_at, nan_from, skipped):
    """_scaled_run's training steps `steps` (appending those the scaler skipped to `skipped`)."""
    x, y = data
    for step in steps:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if step in overflow_at:
            model.conv1.weight.grad[0, 0, 0, 0] = float("inf")
        if nan_from is not None and step >= nan_from:
            model.conv2.weight.grad[0, 0, 0, 0] = float("nan")
        before = model.conv2.weight.detach().clone()
        scaler.step(opt)
        scaler.update()
        if torch.equal(before, model.conv2.weight):
            skipped.append(step)
        rec.step(loss=loss)


def test_the_grad_scalers_own_skipped_steps_are_no_fault_but_a_run_of_them_is(tmp_path):
    """fp16 with GradScaler: a step whose gradients overflow is skipped, as the scaler is made to; its Inf/NaN
    gradients are recorded (optimizer_skipped 1) and are not a finding, nor the shard's first NaN/Inf. A NaN
    gradient on every step from step 12 (every step skipped from there) is the fault, named at step 12, conv2."""
    out = str(tmp_path / "skips")
    assert _scaled_run(out, 20, overflow_at=(0, 9)) == [0, 9]
    with tview.open_run(out) as run:
        assert list(np.flatnonzero(run.scalar("optimizer_skipped")[1])) == [0, 9]
        bad = sum(run.stat_matrix(name, 0)[1] for name in ("grad_nan", "grad_inf")).any(axis=1)
        assert list(np.flatnonzero(bad)) == [0, 9]  # recorded as they were
        assert run.first_nonfinite(0)["layers"] == {}
    assert [f.kind for f in diagnose(out)] == []
    out = str(tmp_path / "nan")
    assert _scaled_run(out, 24, overflow_at=(0,), nan_from=12) == [0] + list(range(12, 24))
    found = [f for f in diagnose(out) if f.kind == "nonfinite"]
    assert [(f.step, f.layer, f.tensor) for f in found] == [(12, "conv2", "gradient")], found
    with tview.open_run(out) as run:
        assert run.first_nonfinite(0)["layers"] == {"conv2": 12}


def test_a_run_of_skipped_steps_that_a_resume_interrupts_still_counts_from_its_first_step(tmp_path):
    """The scaler stuck skipping from step 12 (a NaN gradient every step), the job restarted at step 16 and resumed:
    the run of skips spans the restart, so the fault is still named at step 12 (the resumed shard read back the 4
    skipped records it ended with), not at step 16 where a count started afresh would put it."""
    out = str(tmp_path / "resumed")
    assert _scaled_run(out, 24, overflow_at=(0,), nan_from=12, resume_at=16) == [0] + list(range(12, 24))
    with tview.open_run(out) as run:
        assert list(run.scalar("optimizer_skipped")[0]) == list(range(24))  # one run, the steps continued
        assert run.first_nonfinite(0)["layers"] == {"conv2": 12}
    found = [f for f in diagnose(out) if f.kind == "nonfinite"]
    assert [(f.step, f.layer) for f in found] == [(12, "conv2")], found


def test_layers_cut_off_from_the_gradient_are_named_where_the_cut_starts(tmp_path):
    """bn1's bias pushed to -50 after step 10's backward: the ReLU after it outputs zeros from step 11 on, so no
    gradient reaches bn1 and conv1 again (their gradient norm exactly 0; conv2 still learns its bias). The finding
    is gradient_cut at step 11, bn1 (the nearest the loss of the cut layers), on every rank; a run without it has
    none."""
    def kill(rank, step, model):
        if step == 10:
            with torch.no_grad():
                model.bn1.bias.fill_(-50.0)
    out, recs = _record(tmp_path, steps=30, fault=kill)
    _close(recs)
    with tview.open_run(out) as run:
        steps, g = run.stat("grad_norm", "conv1")
        assert (g[steps <= 10] > 0).all() and (g[steps > 10] == 0).all()  # what plain torch left in .grad
    cut = [f for f in diagnose(out) if f.kind == "gradient_cut"]
    assert [(f.step, f.layer, f.rank) for f in cut] == [(11, "bn1", None)], cut
    out, recs = _record(tmp_path, steps=30, name="clean")
    _close(recs)
    assert not [f for f in diagnose(out) if f.kind == "gradient_cut"]
