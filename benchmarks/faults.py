"""Fault zoo: real DDP runs (gloo ranks, LeNet-5 and the ResNet-style CNN on scikit-learn's digits), one fault
injected per scenario at a known step, rank and layer, then `tview.diagnose`; prints scenario, expected, found,
top-1 correct. Clean runs (other seeds, models, learning rates) must give no finding. Usage:
    python benchmarks/faults.py [--only NAME[,NAME]] [--keep DIR]

How: each rank is a forked process (torch imported once by the parent, 1 thread per rank), training as tview's
demo does (SGD with momentum, its own batches per rank) with a Recorder on every step (preset 'full': every
statistic on every recorded step, so "within one recorded step" means within one step). Faults are real
changes to the training: forward hooks that put a NaN in a module's output, autograd functions that scale a
module's output gradient (NaN, x1e4, x1e-6, one channel x0), a bias that kills a channel, a sleep on one rank,
a SIGKILL of one rank, random labels on one rank, a weight nudged on one rank after the optimizer step.
The training loop also records `busy_time` (from the start of the step to the last local gradient, before
waiting on the other ranks): under synchronous DDP every rank's step_time equals the slowest rank's, so the
straggler only shows in this rank's own busy time.
The killed rank calls rec.flush() just before its SIGKILL so the expected step is exact; a real crash also loses
the records of up to flush_seconds (1 s) before it.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import torch

import tview
from tview.demo import free_port, load_digits_tensors

DATA = {}


@dataclass
class Fault:
    """What goes wrong: how, on which rank (None: every rank), in which module, from which step."""

    how: str
    step: int
    rank: int | None = None
    layer: str | None = None
    channel: int = 0


@dataclass
class Scenario:
    name: str
    model: str = "lenet"
    ranks: int = 2
    steps: int = 160
    lr: float = 0.02
    seed: int = 0
    batch: int = 16
    fault: Fault | None = None
    expected: tuple = ()  # (kind, rank, layer); step from the fault
    needs: str | None = None  # a statistic the diagnosis needs (skipped, said why, if the run lacks it)
    extra: dict = field(default_factory=dict)


SCENARIOS = [
    Scenario("nan-activation", fault=Fault("nan_forward", 100, 1, "conv2"), expected=("nonfinite", 1, "conv2")),
    Scenario("nan-gradient", model="resnet", steps=120, fault=Fault("nan_backward", 80, 1, "stages.1.conv1"),
             expected=("nonfinite", 1, "stages.1.conv1")),
    Scenario("exploding", fault=Fault("grad_scale", 100, None, "fc1"), expected=("exploding_gradients", None, "fc1"),
             extra={"scale": 1e4}),
    Scenario("vanishing", model="resnet", steps=120, fault=Fault("grad_scale", 80, None, "stages.2.conv1"),
             expected=("vanishing_gradients", None, "stages.2.conv1"), extra={"scale": 1e-6}),
    Scenario("dead-filter", fault=Fault("kill_channel", 100, None, "conv2", 5),
             expected=("dead_filters", None, "relu2")),
    Scenario("frozen-filter", model="resnet", steps=120, fault=Fault("freeze_channel", 80, None, "stages.0.conv2", 3),
             expected=("frozen_filters", None, "stages.0.conv2"), needs="grad_channel_norm"),
    Scenario("straggler", fault=Fault("sleep", 100, 1), expected=("slow_rank", 1, None)),
    Scenario("lagging-killed", fault=Fault("kill", 120, 1), expected=("rank_stopped", 1, None)),
    Scenario("diverging-rank", ranks=3, fault=Fault("bad_labels", 100, 2), expected=("rank_diverges", 2, None)),
    Scenario("replicas-differ", ranks=3, fault=Fault("nudge_weight", 110, 0, "fc2"),
             expected=("replicas_differ", 0, "fc2")),
    Scenario("clean-lenet-seed1", seed=1),
    Scenario("clean-resnet-lr0.1", model="resnet", steps=120, lr=0.1, seed=2),
    Scenario("clean-lenet-3ranks-lr0.01", ranks=3, lr=0.01, seed=3),
]


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
    return LeNet5() if name == "lenet" else SmallResNet(in_channels=1, width=8)


def _module(model, name):
    return dict(model.named_modules())[name]


class Injector:
    """Installs one scenario's fault into a rank's model and training loop."""

    def __init__(self, fault: Fault | None, rank: int, model, extra: dict):
        self.fault, self.rank, self.model, self.extra = fault, rank, model, extra
        self.step = 0
        mine = fault is not None and (fault.rank is None or fault.rank == rank)
        self.on = mine
        if mine and fault.layer and fault.how in ("nan_forward", "nan_backward", "grad_scale", "freeze_channel"):
            _module(model, fault.layer).register_forward_hook(self.forward_hook)

    def active(self, once: bool = False) -> bool:
        if not self.on:
            return False
        return self.step == self.fault.step if once else self.step >= self.fault.step

    def forward_hook(self, module, inputs, out):
        how = self.fault.how
        if not module.training:
            return None
        if how == "nan_forward" and self.active(once=True):
            out = out.clone()
            out.view(-1)[0] = float("nan")
            return out
        if how == "nan_backward" and self.active(once=True):
            return ScaleGrad.apply(out, float("nan"))
        if how == "grad_scale" and self.active():
            return ScaleGrad.apply(out, self.extra.get("scale", 1e4))
        if how == "freeze_channel" and self.active():
            mask = torch.ones(1, out.shape[1], *([1] * (out.dim() - 2)))
            mask[:, self.fault.channel] = 0
            return ScaleGrad.apply(out, mask)
        return None

    def before_forward(self, rec):
        how = self.fault.how if self.on else None
        if how == "kill_channel" and self.active(once=True):
            with torch.no_grad():
                _module(self.model, self.fault.layer).bias[self.fault.channel] = -1e3
        elif how == "sleep" and self.active():
            time.sleep(self.extra.get("sleep", 0.15))
        elif how == "kill" and self.active(once=True):
            rec.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def labels(self, y):
        if self.on and self.fault.how == "bad_labels" and self.active():
            return torch.randint(0, 10, y.shape)
        return y

    def after_step(self):
        if self.on and self.fault.how == "nudge_weight" and self.active(once=True):
            with torch.no_grad():
                w = _module(self.model, self.fault.layer).weight
                w.add_(1e-2 * w.abs().mean() * torch.randn_like(w))


def train_rank(rank: int, sc: Scenario, out: str, port: int) -> None:
    """One rank of a scenario: DDP over gloo, a Recorder on every step, the fault injected."""
    import torch.distributed as dist
    import torch.nn.functional as F

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # the recorder's numpy warnings on NaN weights
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=sc.ranks, timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(sc.seed)
    model = make_model(sc.model)
    inject = Injector(sc.fault, rank, model, sc.extra)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=sc.lr, momentum=0.9)
    (x, y), _ = DATA["digits"]
    gen = torch.Generator().manual_seed(1000 * sc.seed + rank)
    mine = torch.arange(rank, len(x), sc.ranks)
    last_grad = [0.0]
    for p in model.parameters():
        p.register_hook(lambda g: last_grad.__setitem__(0, time.perf_counter()))
    rec = tview.Recorder(ddp, out, every=1, preset="full", optimizer=opt, config={"scenario": sc.name})
    try:
        with rec:
            for step in range(sc.steps):
                inject.step = step
                t0 = time.perf_counter()
                inject.before_forward(rec)
                idx = mine[torch.randint(len(mine), (sc.batch,), generator=gen)]
                opt.zero_grad()
                loss = F.cross_entropy(ddp(x[idx]), inject.labels(y[idx]))
                loss.backward()
                busy = last_grad[0] - t0
                opt.step()
                inject.after_step()
                rec.step(loss=loss, busy_time=busy)
    except RuntimeError as exc:  # a peer died: the collective fails; the recorder closes its shard
        print(f"rank {rank}: stopped: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
    finally:
        dist.destroy_process_group()


def run_scenario(sc: Scenario, out: str) -> float:
    """Train every rank of a scenario in forked processes; returns seconds."""
    ctx = mp.get_context("fork")
    port = free_port()
    t0 = time.time()
    procs = [ctx.Process(target=train_rank, args=(r, sc, out, port)) for r in range(sc.ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        if p.is_alive():
            p.kill()
    return time.time() - t0


def expected_text(sc: Scenario) -> str:
    if sc.fault is None:
        return "no finding"
    kind, rank, layer = sc.expected
    return f"{kind} rank={_r(rank)} layer={layer or '-'} step={sc.fault.step}"


def _r(rank):
    return "all" if rank is None else rank


def found_text(findings) -> str:
    if not findings:
        return "no finding"
    f = findings[0]
    more = f" (+{len(findings) - 1})" if len(findings) > 1 else ""
    return f"{f.kind} rank={_r(f.rank)} layer={f.layer or '-'} step={f.step}{more}"


def correct(sc: Scenario, findings) -> bool:
    """Top-1 right: kind, rank and layer equal, step within one recorded step (every step is recorded)."""
    if sc.fault is None:
        return not findings
    if not findings:
        return False
    f = findings[0]
    return ((f.kind, f.rank, f.layer) == tuple(sc.expected) and f.step is not None
            and abs(f.step - sc.fault.step) <= 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--keep", default=None, help="write the runs here (default: a temporary folder, removed)")
    ap.add_argument("--verbose", action="store_true", help="print every finding's message")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    DATA["digits"] = load_digits_tensors()
    chosen = [s for s in SCENARIOS if not a.only or s.name in a.only.split(",")]
    root = a.keep or tempfile.mkdtemp(prefix="tview-faults-")
    rows, t_all = [], time.time()
    for sc in chosen:
        out = os.path.join(root, sc.name)
        seconds = run_scenario(sc, out)
        run = tview.open_run(out, skip_bad_shards=True)
        if sc.needs and sc.needs not in run.channel_stat_names() + run.stat_names():
            rows.append((sc.name, expected_text(sc), f"skipped: this store records no {sc.needs} yet", "skip", seconds))
            run.close()
            continue
        t = time.time()
        findings = tview_diagnose(run)
        rows.append((sc.name, expected_text(sc), found_text(findings), "yes" if correct(sc, findings) else "NO",
                     seconds, time.time() - t))
        if a.verbose:
            for f in findings:
                print(f"  {sc.name}: [{f.severity}] {f.message}")
        run.close()
        print(f"{sc.name}: {rows[-1][2]} ({seconds:.1f} s)", flush=True)
    print_table(rows)
    scored = [r for r in rows if r[3] != "skip"]
    print(f"\n{sum(r[3] == 'yes' for r in scored)} of {len(scored)} top-1 correct "
          f"({len(rows) - len(scored)} skipped); total {time.time() - t_all:.0f} s; runs in {root}")
    return 0 if all(r[3] == "yes" for r in scored) else 1


def tview_diagnose(run):
    from tview.diagnose import diagnose
    return diagnose(run)


def print_table(rows) -> None:
    head = ("scenario", "expected", "found (first finding)", "top-1 correct")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(4)]
    print("\n| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[i]).ljust(w) for i, w in enumerate(widths)) + " |")


if __name__ == "__main__":
    sys.exit(main())
