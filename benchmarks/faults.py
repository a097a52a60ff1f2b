"""Fault zoo: real DDP runs (gloo ranks) of three nets on scikit-learn's digits, one fault injected per scenario at
a known step, rank and layer, recorded with the default preset as users do; then `tview.diagnose`. Prints scenario,
net, ranks, expected, first finding, right or wrong. Clean runs (other seeds, nets, learning rates, and the demo)
must give no finding beyond true ones. Usage:
    python benchmarks/faults.py [--only NAME[,NAME]] [--keep DIR] [--preset default|full] [--verbose]

How: each rank is a forked process (torch, and the torch._dynamo that DDP imports, imported once by the parent; 1
thread per rank), training with SGD and momentum on its own batches, a Recorder on every step. Faults are real
changes to the training: forward hooks that put a NaN or Inf in a module's output (or the input batch), autograd
functions that scale a module's output gradient (NaN, x1e4, x1e-6, one channel x0; on every rank or on one), one
rank's input batches multiplied (a few bad batches), one rank's logits multiplied as the loss gets them (the loss
overflows, every activation finite), a NaN put in one momentum buffer entry before optimizer.step() (the step writes
NaN weights), a bias that kills channels, a BatchNorm bias that kills a whole ReLU layer mid-training, a learning
rate multiplied (at once, or x1.05 a step from a flat stretch: no single jump), weight decay set to 5 (the update
ratio ramps up over a few steps), a layer frozen (requires_grad off
from the start, or its param group's lr set to 0), a sleep on one rank (before the forward, inside it, or after the
optimizer step; or on every 5th step only) or 30 ms of busy work on its CPU inside the forward, tview's own
end-of-forward statistics made 30 ms slower on one rank (the finding must say tview makes it slow, and only there),
a SIGKILL of one rank, random labels on one rank, every rank's labels shifted by 3 classes, all-zero input batches
on one rank (a broken loader), a weight nudged on one rank after the optimizer step. One clean
run warms up and decays its lr twice (warm restarts); one shares rank 1's CPU with a busy process (the ranks pinned
one per CPU): the others wait for rank 1, but the host made it slow, not the training. The Recorder measures each
rank's busy_time (to its last local gradient), wait_time (from there to the start of optimizer.step(): its wait for
the others), after_step_time (from the end of optimizer.step() to rec.step()) and cpu_wait_time (its wait for a
CPU). The killed rank calls rec.flush() just before its SIGKILL so the expected step is exact.
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

import tview
from tview.demo import free_port, load_digits_tensors

DATA = {}
SETTINGS = {"preset": "default"}


@dataclass
class Fault:
    """What goes wrong: how, on which rank (None: every rank), in which module, from which step."""

    how: str
    step: int
    rank: int | None = None
    layer: str | None = None
    channels: tuple = (0,)


@dataclass
class Scenario:
    name: str
    model: str = "lenet"
    ranks: int = 2
    steps: int = 140
    lr: float = 0.02
    seed: int = 0
    batch: int = 16
    fault: Fault | None = None
    expected: tuple = ()  # (kind, rank, layer); step from the fault (or expected_step)
    expected_step: int | None = None
    extra: dict = field(default_factory=dict)
    step_slack: int = 1  # the finding's step may be this many recorded steps off (0: a fault dated one step late
    #                      is the wrong diagnosis the scenario is for)


def _f(how, step, rank=None, layer=None, channels=(0,)):
    return Fault(how, step, rank, layer, tuple(channels))


SCENARIOS = [
    # non-finite values: input, early, middle and last layers; rank 0, rank 1, the last rank
    Scenario("nan-input", fault=_f("nan_input", 90, 1), expected=("nonfinite", 1, "conv1")),
    Scenario("nan-activation", fault=_f("nan_forward", 100, 1, "conv2"), expected=("nonfinite", 1, "conv2")),
    Scenario("inf-middle", model="resnet", steps=110, fault=_f("inf_forward", 70, 0, "stages.1.conv1"),
             expected=("nonfinite", 0, "stages.1.conv1")),
    Scenario("nan-gradient", model="resnet", steps=110, fault=_f("nan_backward", 80, 1, "stages.1.conv1"),
             expected=("nonfinite", 1, "stages.1.conv1")),
    Scenario("inf-loss-one-rank", fault=_f("loss_overflow", 100, 1),  # the logits fed to the loss x1e38 (not
             expected=("nonfinite", 1, None), extra={"scale": 1e38}),  # an activation): the loss overflows first
    Scenario("nan-momentum", ranks=3, fault=_f("nan_momentum", 100, 2, "conv2"),  # the step writes NaN weights,
             expected=("nonfinite", 2, "conv2"), step_slack=0),  # not the forward after it
    Scenario("nan-last-layer-4ranks", model="plain", ranks=4, steps=90, fault=_f("nan_forward", 60, 3, "fc"),
             expected=("nonfinite", 3, "fc")),
    # gradients
    Scenario("exploding", fault=_f("grad_scale", 100, None, "fc1"), expected=("exploding_gradients", None, "fc1"),
             extra={"scale": 1e4}),
    Scenario("exploding-first-layer", model="plain", ranks=3, steps=110, fault=_f("grad_scale", 70, None,
                                                                                  "features.0"),
             expected=("exploding_gradients", None, "features.0"), extra={"scale": 1e3}),
    Scenario("exploding-one-rank", fault=_f("grad_scale", 100, 1, "fc1"), expected=("exploding_gradients", 1, "fc1"),
             extra={"scale": 1e4}),  # one rank's gradient x1e4: the all-reduced one jumps on every rank
    Scenario("bad-batch-one-rank", ranks=3, steps=120, fault=_f("scale_input", 90, 2),  # rank 2's inputs x1e3
             expected=("exploding_gradients", 2, "fc3"), extra={"scale": 1e3, "length": 3}),
    Scenario("vanishing", model="resnet", steps=110, fault=_f("grad_scale", 80, None, "stages.2.conv1"),
             expected=("vanishing_gradients", None, "stages.2.conv1"), extra={"scale": 1e-6}),
    # dead and frozen
    Scenario("dead-filter", fault=_f("kill_channel", 100, None, "conv2", (5,)),
             expected=("dead_filters", None, "relu2")),
    Scenario("relu-death-mid", model="plain", steps=150, fault=_f("bn_death", 120, None, "features.4"),
             expected=("dead_filters", None, "features.5")),
    Scenario("dead-units-last", fault=_f("kill_channel", 80, None, "fc2", range(0, 84, 2)),
             expected=("dead_units", None, "relu4")),
    Scenario("dead-units-sinking", fault=_f("sink_bias", 80, None, "fc2", range(0, 84, 2)),  # the bias of half of
             expected=("dead_units", None, "relu4"), extra={"rate": 0.04}, step_slack=3),  # fc2's units lowered
    #     0.04 a step: each rank sees them die over a few steps, dated by its own batches (rank 0: most at step 0, with
    #     its units dead from the start); replicas hold the same weights: one finding for every rank
    Scenario("frozen-filter", model="resnet", steps=170, fault=_f("freeze_channel", 80, None, "stages.0.conv2", (3,)),
             expected=("frozen_filters", None, "stages.0.conv2")),
    Scenario("frozen-first-conv-ddp", model="plain", ranks=3, steps=100, fault=_f("frozen_start", 0, None,
                                                                                 "features.0"),
             expected=("frozen_layer", None, "features.0")),
    Scenario("frozen-mid", fault=_f("freeze_group", 100, None, "fc2"), expected=("frozen_layer", None, "fc2")),
    # the optimizer
    Scenario("lr-spike", model="plain", steps=150, fault=_f("lr_scale", 120), expected=("lr_jump", None, None),
             extra={"scale": 300.0}),
    Scenario("lr-spike-no-optimizer", model="resnet", steps=110, fault=_f("lr_scale", 80),  # lr from global hooks
             expected=("lr_jump", None, None), extra={"scale": 100.0, "no_optimizer": True}),
    Scenario("lr-spike-one-rank", model="lenet", steps=120, fault=_f("lr_scale", 90, rank=1),  # a rank-local edit
             expected=("lr_jump", 1, None), extra={"scale": 50.0}),
    Scenario("lr-ramp", steps=160, fault=_f("lr_ramp", 80), expected=("lr_jump", None, None),  # x1.05 a step:
             extra={"factor": 1.05}),  # 10x the lr it trained at by step 127, no step 3x the one before
    Scenario("labels-permuted", steps=140, fault=_f("label_permute", 100),  # a class-index mapping off by 3 on
             expected=("loss_spike", None, None)),  # every rank: the loss 5x, then the net back at chance (2x)
    Scenario("weight-decay-blowup", steps=140, fault=_f("weight_decay", 100),  # the update ratio 6x, 15x, 30x its
             expected=("update_ratio_jump", None, None), step_slack=0),  # level over 3 steps: dated where it began
    Scenario("momentum-blowup", steps=140, fault=_f("momentum_scale", 100), expected=("update_ratio_jump", None, None),
             extra={"scale": 1000.0}),
    # ranks
    Scenario("straggler-after-step", fault=_f("sleep_after", 90, 1), expected=("slow_rank", 1, None)),
    Scenario("straggler-data-rank0", model="resnet", ranks=3, steps=100, fault=_f("sleep_data", 60, 0),
             expected=("slow_rank", 0, None)),
    Scenario("straggler-forward-last", model="plain", ranks=4, steps=90, fault=_f("sleep_forward", 50, 3,
                                                                                 "features.3"),
             expected=("slow_rank", 3, None), extra={"sleep": 0.06}),
    Scenario("straggler-every-5th", steps=140, fault=_f("sleep_every", 60, 1),  # 60 ms on 1 step in 5 only
             expected=("slow_rank", 1, None), extra={"sleep": 0.06, "every": 5}),
    Scenario("straggler-compute-rank0", steps=120, fault=_f("spin_forward", 70, 0, "conv2"),  # CPU-bound, no sleep
             expected=("slow_rank", 0, None)),
    Scenario("straggler-tview-rank1", steps=120, fault=_f("slow_tview", 70, 1),  # tview's own statistics slow there
             expected=("slow_rank", 1, None)),
    Scenario("killed", fault=_f("kill", 120, 1), expected=("rank_stopped", 1, None)),
    Scenario("label-noise", ranks=3, fault=_f("bad_labels", 100, 2), expected=("rank_diverges", 2, None)),
    Scenario("label-noise-rank0", model="plain", steps=130, fault=_f("bad_labels", 80, 0),
             expected=("rank_diverges", 0, None)),
    Scenario("zero-input-one-rank", ranks=3, fault=_f("zero_input", 90, 1),  # rank 1's loader yields zeros
             expected=("rank_diverges", 1, None)),
    Scenario("labels-permuted-one-rank", ranks=3, steps=140, fault=_f("label_permute", 90, 1),  # rank 1's class
             expected=("rank_diverges", 1, None)),  # mapping off by 3 (a bad shard): its loss 2.5x, then ~1.5x
    Scenario("stuck-loader-one-rank", ranks=3, steps=140, fault=_f("stuck_batch", 80, 2),  # rank 2's loader
             expected=("rank_diverges", 2, None)),  # yields one batch again and again: its loss falls below
    Scenario("zero-input-plain-rank0", model="plain", steps=120, fault=_f("zero_input", 70, 0),  # BatchNorm net:
             expected=("rank_diverges", 0, None)),  # its dead channels there follow from it, not apart
    Scenario("same-batches-every-rank", ranks=3, steps=120, fault=_f("same_data", 0),  # no DistributedSampler:
             expected=("ranks_same_data", None, None)),  # every rank draws the same batches from the whole set
    Scenario("replicas-differ", ranks=3, fault=_f("nudge_weight", 110, 0, "fc2"),
             expected=("replicas_differ", 0, "fc2")),
    Scenario("replicas-last-rank", model="resnet", ranks=4, steps=90, fault=_f("nudge_weight", 60, 3,
                                                                              "stages.0.conv1"),
             expected=("replicas_differ", 3, "stages.0.conv1")),
    # clean runs
    Scenario("clean-lenet-seed1", seed=1),
    Scenario("clean-resnet-lr0.1", model="resnet", steps=110, lr=0.1, seed=2),
    Scenario("clean-lenet-3ranks-lr0.01", ranks=3, lr=0.01, seed=3),
    Scenario("clean-plain-4ranks", model="plain", ranks=4, steps=90, lr=0.05, seed=4),
    Scenario("clean-warmup-restarts", model="plain", steps=150, lr=0.05, seed=6,  # lr from lr/100 up, cosine down,
             extra={"schedule": 75}),  # twice (warm restarts of 75 steps, each warming up over its first 15)
    Scenario("clean-demo", model="demo", steps=1500),
    Scenario("clean-reduced-loss", ranks=3, seed=7, extra={"reduced_loss": True}),  # each rank logs the mean loss
    #     over the ranks (an all-reduced loss, as many scripts log it): the same on every rank, batches their own
    Scenario("clean-busy-host", seed=5, batch=128, steps=100, extra={"hog_cpu": 1}),  # rank 1 shares its core with
    #     another process; steps long beside the OS time slice (at batch 16, 6 ms: a share of them went unslowed)
]


class PlainBNNet(nn.Module):
    """Conv-BatchNorm-ReLU x3 (each module its own, so each ReLU is recorded apart) and a linear classifier, for
    1-channel 16x16 images."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(2 * width * 4 * 4, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient multiplied by `scale` (a number, or a tensor broadcast over channels)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def make_model(name: str):
    from tview.models import LeNet5, SmallResNet
    return {"lenet": LeNet5, "resnet": lambda: SmallResNet(in_channels=1, width=8), "plain": PlainBNNet}[name]()


def _module(model, name):
    return dict(model.named_modules())[name]


FORWARD_FAULTS = ("nan_forward", "inf_forward", "nan_backward", "grad_scale", "freeze_channel", "sleep_forward",
                  "spin_forward")


class Injector:
    """Installs one scenario's fault into a rank's model and training loop."""

    def __init__(self, fault: Fault | None, rank: int, model, extra: dict):
        self.fault, self.rank, self.model, self.extra = fault, rank, model, extra
        self.step = 0
        self.on = fault is not None and (fault.rank is None or fault.rank == rank)
        if self.on and fault.how in FORWARD_FAULTS:
            _module(model, fault.layer).register_forward_hook(self.forward_hook)
        if fault is not None and fault.how == "frozen_start":  # every rank: DDP needs the same parameters
            for p in _module(model, fault.layer).parameters():
                p.requires_grad_(False)

    def active(self, once: bool = False) -> bool:
        if not self.on:
            return False
        return self.step == self.fault.step if once else self.step >= self.fault.step

    def forward_hook(self, module, inputs, out):
        if not module.training or not self.active():
            return None
        how, once = self.fault.how, self.step == self.fault.step
        if how in ("nan_forward", "inf_forward") and once:
            out = out.clone()
            out.view(-1)[0] = float("nan") if how == "nan_forward" else float("inf")
            return out
        if how == "nan_backward" and once:
            return ScaleGrad.apply(out, float("nan"))
        if how == "grad_scale":
            return ScaleGrad.apply(out, self.extra.get("scale", 1e4))
        if how == "freeze_channel":
            mask = torch.ones(1, out.shape[1], *([1] * (out.dim() - 2)))
            mask[:, list(self.fault.channels)] = 0
            return ScaleGrad.apply(out, mask)
        if how == "sleep_forward":
            time.sleep(self.extra.get("sleep", 0.03))
        if how == "spin_forward":  # work on the CPU (a larger batch, a costlier augmentation), not a sleep
            end = time.perf_counter() + self.extra.get("sleep", 0.03)
            while time.perf_counter() < end:
                pass
        return None

    def before_forward(self, rec, opt):
        how = self.fault.how if self.on else None
        if how in ("kill_channel", "bn_death") and self.active(once=True):
            with torch.no_grad():
                _module(self.model, self.fault.layer).bias[list(self.fault.channels) if how == "kill_channel"
                                                           else slice(None)] = -1e3 if how == "kill_channel" else -50
        elif how == "sleep_data" and self.active():
            time.sleep(self.extra.get("sleep", 0.03))
        elif how == "sink_bias" and self.active():  # units die one after another, over several steps
            with torch.no_grad():
                _module(self.model, self.fault.layer).bias[list(self.fault.channels)] -= self.extra["rate"]
        elif how == "sleep_every" and self.active() and (self.step - self.fault.step) % self.extra["every"] == 0:
            time.sleep(self.extra.get("sleep", 0.03))  # a stall on every k-th step only (a loader's refill)
        elif how == "slow_tview" and self.active(once=True):  # tview itself slow on this rank from here on
            reduce_kept = rec._reduce_kept

            def slow_reduce_kept(*args, **kwargs):
                time.sleep(self.extra.get("sleep", 0.03))
                return reduce_kept(*args, **kwargs)
            rec._reduce_kept = slow_reduce_kept
        elif how == "kill" and self.active(once=True):
            rec.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        elif how in ("momentum_scale", "nan_momentum") and self.active(once=True):
            self.optimizer_state(opt)
        elif how in ("lr_scale", "freeze_group", "lr_ramp", "weight_decay"):
            self.lr_edit(opt)

    def lr_edit(self, opt):
        """lr x extra["scale"] once (lr_scale), x extra["factor"] on every step from the fault's (lr_ramp: no single
        jump), or the last param group's lr set to 0 once (freeze_group); or every group's weight decay set to 5 once
        (weight_decay)."""
        how = self.fault.how
        if not self.active(once=how != "lr_ramp"):
            return
        if how == "weight_decay":  # a config slip: weight decay 5 where 5e-4 was meant
            for g in opt.param_groups:
                g["weight_decay"] = self.extra.get("decay", 5.0)
            return
        groups = opt.param_groups[-1:] if how == "freeze_group" else opt.param_groups
        for g in groups:
            g["lr"] = 0.0 if how == "freeze_group" else g["lr"] * self.extra["scale" if how == "lr_scale" else "factor"]

    def optimizer_state(self, opt):
        """An optimizer state gone wrong (a bad load), before this step's optimizer.step(): every momentum buffer
        multiplied (momentum_scale), or one entry of the layer's weight's buffer NaN (nan_momentum: the step then
        writes NaN into those weights, activations and gradients of the step all finite)."""
        if self.fault.how == "momentum_scale":
            for state in opt.state.values():
                state["momentum_buffer"].mul_(self.extra["scale"])
            return
        weight = _module(self.model, self.fault.layer).weight
        with torch.no_grad():
            opt.state[weight]["momentum_buffer"].view(-1)[0] = float("nan")

    def inputs(self, x):
        if self.on and self.fault.how == "nan_input" and self.active(once=True):
            x = x.clone()
            x.view(-1)[0] = float("nan")
        if self.on and self.fault.how == "zero_input" and self.active():  # a broken loader: zeros from here on
            x = torch.zeros_like(x)
        if self.on and self.fault.how == "scale_input" and self.active() \
                and self.step < self.fault.step + self.extra.get("length", 3):  # a bad batch (or a few)
            x = x * self.extra.get("scale", 1e3)
        return x

    def batch(self, idx):
        """The batch's indices: from the fault step on, the fault step's batch again and again (stuck_batch: a
        loader stuck on one batch)."""
        if self.on and self.fault.how == "stuck_batch" and self.active():
            self.extra.setdefault("stuck", idx)
            return self.extra["stuck"]
        return idx

    def logits(self, out):
        """The model's output as the loss gets it: x extra["scale"] at the fault step (loss_overflow: a loss
        function that overflows, every activation finite)."""
        if self.on and self.fault.how == "loss_overflow" and self.active(once=True):
            return out * self.extra.get("scale", 1e38)
        return out

    def labels(self, y):
        if self.on and self.fault.how == "bad_labels" and self.active():
            return torch.randint(0, 10, y.shape)
        if self.on and self.fault.how == "label_permute" and self.active():
            return (y + 3) % 10
        return y

    def after_step(self):
        if self.on and self.fault.how == "sleep_after" and self.active():
            time.sleep(self.extra.get("sleep", 0.03))
        if self.on and self.fault.how == "nudge_weight" and self.active(once=True):
            with torch.no_grad():
                w = _module(self.model, self.fault.layer).weight
                w.add_(1e-2 * w.abs().mean() * torch.randn_like(w))


def make_optimizer(sc: Scenario, model, ddp):
    """SGD with momentum; a fault that freezes one layer's param group gets that layer's parameters apart."""
    if sc.fault is None or sc.fault.how != "freeze_group":
        return torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=sc.lr, momentum=0.9)
    own = {id(p) for p in _module(model, sc.fault.layer).parameters()}
    rest = [p for p in model.parameters() if id(p) not in own]
    return torch.optim.SGD([{"params": rest}, {"params": [p for p in model.parameters() if id(p) in own]}],
                           lr=sc.lr, momentum=0.9)


def train_rank(rank: int, sc: Scenario, out: str, port: int) -> None:
    """One rank of a scenario: DDP over gloo, a Recorder on every step, the fault injected."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    if sc.extra.get("hog_cpu") is not None:
        _pin(rank)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # the recorder's numpy warnings on NaN weights
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=sc.ranks, timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(sc.seed)
    model = make_model(sc.model)
    inject = Injector(sc.fault, rank, model, sc.extra)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = make_optimizer(sc, model, ddp)
    rec = tview.Recorder(ddp, out, every=1, preset=SETTINGS["preset"],
                         optimizer=None if sc.extra.get("no_optimizer") else opt, config={"scenario": sc.name})
    try:
        with rec:
            train_loop(rank, sc, ddp, opt, rec, inject)
    except RuntimeError as exc:  # a peer died: the collective fails; the recorder closes its shard
        print(f"rank {rank}: stopped: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
    finally:
        dist.destroy_process_group()


def train_loop(rank, sc, ddp, opt, rec, inject) -> None:
    import torch.nn.functional as F
    (x, y), _ = DATA["digits"]
    same = sc.fault is not None and sc.fault.how == "same_data"  # no DistributedSampler: one shuffle for all
    gen = torch.Generator().manual_seed(1000 * sc.seed + (0 if same else rank))
    mine = torch.arange(0 if same else rank, len(x), 1 if same else sc.ranks)
    for step in range(sc.steps):
        inject.step = step
        if sc.extra.get("schedule"):
            scheduled_lr(sc, opt, step)
        inject.before_forward(rec, opt)
        idx = inject.batch(mine[torch.randint(len(mine), (sc.batch,), generator=gen)])
        opt.zero_grad()
        loss = F.cross_entropy(inject.logits(ddp(inject.inputs(x[idx]))), inject.labels(y[idx]))
        loss.backward()
        opt.step()
        inject.after_step()
        rec.step(loss=_logged(loss, sc))


def _logged(loss, sc: Scenario):
    """The loss the script gives rec.step(): its own, or (extra["reduced_loss"]) the mean over the ranks, as scripts
    that log an all-reduced loss do (every rank then logs the same number, its batches its own)."""
    if not sc.extra.get("reduced_loss"):
        return loss
    import torch.distributed as dist
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    return mean / sc.ranks


def scheduled_lr(sc: Scenario, opt, step: int) -> None:
    """Warm restarts of extra["schedule"] steps: each warms up linearly from lr/100 over its first fifth, then
    decays as a cosine to lr/100 (a legitimate schedule: lr rises 100x after a decay, back to the peak it had)."""
    cycle = sc.extra["schedule"]
    t, warm = step % cycle, cycle // 5
    share = (t + 1) / warm if t < warm else 0.5 * (1 + math.cos(math.pi * (t - warm) / (cycle - warm)))
    for g in opt.param_groups:
        g["lr"] = sc.lr * (0.01 + 0.99 * share)


def run_scenario(sc: Scenario, out: str) -> float:
    """Train every rank of a scenario in forked processes (the demo: tview's own demo's ranks, as `tview demo`
    trains them, forked here rather than spawned); returns seconds."""
    t0 = time.time()
    target, args = (_demo_rank, (sc, out)) if sc.model == "demo" else (train_rank, (sc, out))
    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, *args, port)) for r in range(sc.ranks)]
    hog = _start_hog(ctx, sc.extra.get("hog_cpu"))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        if p.is_alive():
            p.kill()
    if hog is not None:
        hog.kill()
        hog.join()
    return time.time() - t0


def _start_hog(ctx, cpu: int | None):
    """Another process busy on one CPU (a host shared with other jobs), the ranks pinned one per CPU; None
    where no CPU is named or the machine has too few."""
    if cpu is None or cpu >= len(os.sched_getaffinity(0)):
        return None
    hog = ctx.Process(target=_spin, args=(cpu,), daemon=True)
    hog.start()
    return hog


def _spin(cpu: int) -> None:
    _pin(cpu)
    while True:
        pass


def _pin(index: int) -> None:
    """Run on the index-th of the CPUs this process may use (modulo their count)."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def _demo_rank(rank: int, sc: Scenario, out: str, port: int) -> None:
    """One rank of tview's demo with run_demo's own settings (its signature's defaults) but the scenario's steps."""
    import inspect

    from tview.demo import LR, run_demo, train_rank
    d = {k: v.default for k, v in inspect.signature(run_demo).parameters.items()}
    train_rank(rank, sc.ranks, out, sc.steps, d["every"], d["snapshot_every"], d["batch"], port, d["mode"], LR,
               None)


def warm_imports() -> None:
    """Import once, before the ranks fork, what each would import for itself: DDP's constructor imports
    torch._dynamo (about 2 s of CPU, in every rank of every scenario otherwise)."""
    import torch._dynamo  # noqa: F401
    import torch.distributed  # noqa: F401


def expected_step(sc: Scenario) -> int | None:
    return sc.expected_step if sc.expected_step is not None else (sc.fault.step if sc.fault else None)


def expected_text(sc: Scenario) -> str:
    if sc.fault is None:
        return "true ones only" if sc.model == "demo" else "no finding"
    kind, rank, layer = sc.expected
    return f"{kind} rank={_r(rank)} layer={layer or '-'} step={expected_step(sc)}"


def _r(rank):
    return "all" if rank is None else rank


def found_text(findings) -> str:
    if not findings:
        return "no finding"
    f = findings[0]
    more = f" (+{len(findings) - 1})" if len(findings) > 1 else ""
    folded = f" [followed by {len(f.followed_by)}]" if f.followed_by else ""
    return f"{f.kind} rank={_r(f.rank)} layer={f.layer or '-'} step={f.step}{folded}{more}"


TRUE_IN_CLEAN = ("dead_filters", "dead_units")  # a clean run may truly have dead ReLU channels (the demo's relu2)


def correct(sc: Scenario, findings) -> bool:
    """Top-1 right: kind, rank and layer equal, step within the scenario's step_slack (one recorded step unless it
    says; every step is recorded). A clean run: no finding but dead channels, which are true when they stay zero to
    the end (the demo has some)."""
    if sc.fault is None:
        return all(f.kind in TRUE_IN_CLEAN and not f.followed_by for f in findings)
    if not findings:
        return False
    f = findings[0]
    if f.kind == "slow_rank" and (f.stat == "tview_time") != (sc.fault.how == "slow_tview"):
        return False  # tview blamed for a slow rank it did not make slow, or not blamed where it did
    return ((f.kind, f.rank, f.layer) == tuple(sc.expected) and f.step is not None
            and abs(f.step - expected_step(sc)) <= sc.step_slack)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--keep", default=None, help="write the runs here (default: a temporary folder, removed)")
    ap.add_argument("--preset", default="default", help="the Recorder's preset (default: as users record)")
    ap.add_argument("--verbose", action="store_true", help="print every finding's message")
    ap.add_argument("--reuse", action="store_true", help="diagnose the runs already in --keep again, not training")
    a = ap.parse_args(argv)
    SETTINGS["preset"] = a.preset
    torch.set_num_threads(1)
    warm_imports()
    DATA["digits"] = load_digits_tensors()
    chosen = [s for s in SCENARIOS if not a.only or s.name in a.only.split(",")]
    root = a.keep or tempfile.mkdtemp(prefix="tview-faults-")
    rows, t_all = [], time.time()
    for sc in chosen:
        rows.append(run_one(sc, os.path.join(root, sc.name), a.verbose, a.reuse))
        print(f"{sc.name}: {rows[-1][5]} ({rows[-1][7]:.1f} s)", flush=True)
    print_table(rows)
    print(f"\n{sum(r[6] == 'yes' for r in rows)} of {len(rows)} right, preset {a.preset}; total "
          f"{time.time() - t_all:.0f} s; runs in {root}")
    return 0 if all(r[6] == "yes" for r in rows) else 1


def run_one(sc: Scenario, out: str, verbose: bool, reuse: bool = False) -> tuple:
    from tview.diagnose import diagnose
    seconds = 0.0 if reuse and os.path.isdir(out) else run_scenario(sc, out)
    try:
        with tview.open_run(out, skip_bad_shards=True) as run:
            findings = diagnose(run)
    except tview.errors.NotARunError:  # the Recorder refused the set-up
        return (sc.name, sc.model, sc.ranks, sc.fault.how if sc.fault else "-", expected_text(sc), "no run recorded",
                "NO", seconds)
    if verbose:
        from tview.diagnose.report import finding_lines
        for f in findings:
            print("\n".join(f"  {sc.name}: {line}" for line in finding_lines(f)))
    return (sc.name, "demo" if sc.model == "demo" else sc.model, sc.ranks, sc.fault.how if sc.fault else "-",
            expected_text(sc), found_text(findings), "yes" if correct(sc, findings) else "NO", seconds)


def print_table(rows) -> None:
    head = ("scenario", "net", "ranks", "fault", "expected", "first finding", "right")
    cells = [tuple(str(c) for c in r[:7]) for r in rows]
    widths = [max(len(r[i]) for r in cells + [head]) for i in range(7)]
    print("\n| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    sys.exit(main())
