"""Training overhead of the Recorder: the same CNN trained with and without it, step by step interleaved.

Prints, per configuration, its total training time over plain training's (the figure, with its
standard error from ten consecutive parts of the run) and its median step time over plain's. Usage:
    python benchmarks/overhead.py [--model resnet|lenet] [--steps 600] [--batch 64] [--full]

How (this 2-core VM's speed wanders by 20% within seconds: one plain copy against another, timed
in blocks of 20 steps, came out at 0.80x over 12 rounds):
- Each configuration trains its own copy of the model in one process; they take turns step by
  step, in a new shuffled order each round, so a slow moment of the machine falls on all alike.
- The figure is total time over total time: every step counts, the rare costly ones too (a median
  of per-step ratios would hide the activation-statistics steps that come every 10th record).
- A tool's background writer writes when flushed, as often as tview's writer does by itself (once
  a second of plain training or every 128 records, whichever comes first), and that flush is timed
  as part of its step: the writer's work is charged to the tool, not to whichever configuration
  runs next.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import tview
from tview.models import ConvBNNet, LeNet5, SmallResNet, ThreeC3D

MODELS = {"resnet": (SmallResNet, (3, 32, 32)), "lenet": (LeNet5, (1, 16, 16)), "convbn": (ConvBNNet, (3, 32, 32)),
          "3c3d": (ThreeC3D, (3, 32, 32))}


COMPILE = None  # --compile BACKEND: each configuration trains torch.compile(model), the Recorder on the compiled model
DEVICE = "cpu"  # --device cuda: models and batches on the GPU, every step ends with a synchronize


def make(model_name: str, batch: int):
    torch.manual_seed(0)
    cls, shape = MODELS[model_name]
    return (cls().to(DEVICE), torch.randn(batch, *shape, device=DEVICE),
            torch.randint(0, 10, (batch,), device=DEVICE))


def recorder(**kwargs):
    """A configuration: a tview Recorder with these arguments, in its own folder under tmp, whose
    writer writes when flushed (measure() flushes it every `flush_every` steps, timed)."""
    kwargs.setdefault("flush_seconds", 3600.0)
    return lambda model, opt, tmp: tview.Recorder(model, tempfile.mkdtemp(dir=tmp), optimizer=opt, **kwargs)


class Trainer:
    """One configuration: its own copy of the model and optimizer, and (maybe) a logging tool with
    step(loss=...) and close(), made by `attach(model, optimizer, tmp)`."""

    def __init__(self, base, attach, tmp: str):
        self.model = copy.deepcopy(base)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.run = torch.compile(self.model, backend=COMPILE) if COMPILE else self.model
        self.rec = attach(self.run, self.opt, tmp) if attach is not None else None

    def step(self, x, y) -> float:
        """Wall time of one training step, the tool's step() included."""
        t0 = time.perf_counter()
        self.opt.zero_grad()
        loss = F.cross_entropy(self.run(x), y)
        loss.backward()
        self.opt.step()
        if self.rec is not None:
            self.rec.step(loss=loss)
        if DEVICE != "cpu":
            torch.cuda.synchronize()  # the step's GPU work counted in its time, with or without a tool
        return time.perf_counter() - t0

    def flush(self) -> float:
        """Wall time of writing out what the tool has queued (nothing for a tool without flush())."""
        t0 = time.perf_counter()
        if hasattr(self.rec, "flush"):
            self.rec.flush()
        return time.perf_counter() - t0

    def steps(self, x, y, n: int) -> float:
        """Wall time of n training steps, then a flush."""
        return sum(self.step(x, y) for _ in range(n)) + self.flush()

    def close(self) -> int:
        if self.rec is None:
            return 0
        self.rec.close()
        return getattr(self.rec, "dropped", 0)


FLUSH_SECONDS = 1.0  # tview's default: its writer writes and flushes once a second

CONFIGS = {
    "plain": None,
    "default, every step": recorder(every=1),
    "default, every 10th step": recorder(every=10),
    "economy, every step": recorder(every=1, preset="economy"),
}
FULL = {"full, every step": recorder(every=1, preset="full")}


def measure(model_name: str, steps: int, batch: int, configs=CONFIGS, seed: int = 0,
             flush_every: int | None = None, warmup: int = 3, reported: dict | None = None) -> dict[str, list[float]]:
    """Per configuration, the wall time of each of its `steps` timed steps (a flush included in
    every `flush_every`-th), the configurations taking turns step by step (see the module text).
    By default a tool is flushed as often as tview's writer flushes by itself: every
    `flush_seconds` (1 s) of plain training, in steps, from the warm-up. `reported`: filled with what each
    tview configuration said it cost (self_reported)."""
    base, x, y = make(model_name, batch)
    times = {name: [] for name in configs}
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: Trainer(base, attach, tmp) for name, attach in configs.items()}
        for t in trainers.values():
            t.steps(x, y, warmup)
        if flush_every is None:
            plain_step = statistics.median(trainers["plain"].step(x, y) for _ in range(warmup))
            # as tview's writer: once a second, or when half its queue (128 records) waits
            flush_every = max(1, min(round(FLUSH_SECONDS / plain_step), 128))
            print(f"  flushing every {flush_every} steps ({FLUSH_SECONDS:g} s of plain training)", file=sys.stderr)
        order = list(trainers)
        for k in range(steps):
            rng.shuffle(order)
            for name in order:
                t = trainers[name].step(x, y)
                if (k + 1) % flush_every == 0:
                    t += trainers[name].flush()
                times[name].append(t)
        for name, t in trainers.items():
            if t.close():
                print(f"  note: {name}: {t.rec.dropped} recorded steps dropped by the writer", file=sys.stderr)
            if reported is not None and isinstance(t.rec, tview.Recorder):
                reported[name] = self_reported(t.rec.run_dir, warmup)
    return times


def self_reported(run_dir: str, warmup: int) -> tuple[float, float]:
    """(seconds tview said it spent on the training thread, CPU seconds its writer said it used): the sums of the
    run's tview_time and tview_writer_cpu over the timed steps (the warm-up's records left out)."""
    with tview.open_run(run_dir) as run:
        out = []
        for name in ("tview_time", "tview_writer_cpu"):
            steps, values = run.scalar(name)
            out.append(float(np.nansum(values[np.asarray(steps) >= warmup])))
    return tuple(out)


def ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """Per configuration: total time over plain training's total time."""
    plain = sum(times["plain"])
    return {name: sum(ts) / plain for name, ts in times.items()}


def median_step_ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """Per configuration: its median step time over plain training's (the typical step: it leaves
    out the rare costly ones, so it is shown beside the figure, not instead of it)."""
    plain = statistics.median(times["plain"])
    return {name: statistics.median(ts) / plain for name, ts in times.items()}


def spread(times: dict[str, list[float]], parts: int = 10) -> dict[str, float]:
    """Per configuration: the standard error of its ratio, from the ratios of `parts` consecutive
    parts of the run (how much the machine's noise moves the figure)."""
    n = len(times["plain"]) // parts
    out = {}
    for name, ts in times.items():
        r = [sum(ts[i * n:(i + 1) * n]) / sum(times["plain"][i * n:(i + 1) * n]) for i in range(parts)]
        out[name] = statistics.stdev(r) / parts ** 0.5 if parts > 1 and n else float("nan")
    return out


def short_runs(model_name: str, batch: int, steps: int, rounds: int, attach=None) -> tuple[float, float]:
    """A user's short run, whole: `steps` steps of tview's default preset every step, then close()
    (what a run of 100 steps pays at its end), against the same steps plain; the two take turns
    `rounds` times. (total tview time / total plain time, its standard error over the rounds)."""
    base, x, y = make(model_name, batch)
    attach = attach or (lambda m, opt, tmp: tview.Recorder(m, tempfile.mkdtemp(dir=tmp), every=1, optimizer=opt))
    tv, pl = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in (("plain", "tview") if r % 2 == 0 else ("tview", "plain")):
                trainer = Trainer(base, None if name == "plain" else attach, tmp)
                trainer.steps(x, y, 2)  # warm-up (first calls allocate)
                t0 = time.perf_counter()
                trainer.steps(x, y, steps)
                trainer.close()
                (pl if name == "plain" else tv).append(time.perf_counter() - t0)
    per_round = [a / b for a, b in zip(tv, pl)]
    err = statistics.stdev(per_round) / len(per_round) ** 0.5 if len(per_round) > 1 else float("nan")
    return sum(tv) / sum(pl), err


COMPILED_WARMUP = 41  # steps: every 10th step recorded, its records 0-4 (a detail step, then ordinary ones) seen


def measure_pairs(a, configs: dict, reported: dict) -> dict[str, dict[str, list[float]]]:
    """Compiled: each tview configuration against its own plain copy, dynamo's cache cleared before each pair,
    then COMPILED_WARMUP steps untimed: dynamo compiles the forward once per kind of recorded step (the probes that
    run differ: a detail step, an ordinary one, none), each a second or two on this CPU, once in a run.
    Compiled copies of one model class share dynamo's cached code; with several Recorders in one process, a
    Recorder that saw a recorded step without its statistics dropped that cache (once each), and every copy,
    plain included, recompiled inside the timed steps (0.5-2 s steps: total-time ratios of 0.5x)."""
    out = {}
    for name, attach in configs.items():
        if attach is not None:
            torch._dynamo.reset()
            out[name] = measure(a.model, a.steps, a.batch, configs={"plain": None, name: attach},
                                flush_every=a.flush_every, reported=reported, warmup=COMPILED_WARMUP)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=tuple(MODELS), default="resnet")
    ap.add_argument("--short-runs", type=int, default=0,
                    help="also time this many whole short runs of --short-steps steps, close() included")
    ap.add_argument("--short-steps", type=int, default=100)
    ap.add_argument("--steps", type=int, default=600, help="timed steps per configuration")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--flush-every", type=int, default=None,
                    help="steps between timed flushes of a tool's writer (default: 1 s of plain training)")
    ap.add_argument("--full", action="store_true", help="also the full preset (slow: every histogram over every value)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--compile", default=None, metavar="BACKEND",
                    help="train torch.compile(model, backend=BACKEND) in every configuration (aot_eager, inductor)")
    a = ap.parse_args(argv)
    global DEVICE, COMPILE
    DEVICE, COMPILE = a.device, a.compile
    torch._dynamo.config.cache_size_limit = 64  # one compiled model per configuration, each traced 2-3 times
    reported: dict = {}
    configs = {**CONFIGS, **FULL} if a.full else CONFIGS
    pairs = measure_pairs(a, configs, reported) if COMPILE else {"": measure(
        a.model, a.steps, a.batch, configs=configs, flush_every=a.flush_every, reported=reported)}
    where = torch.cuda.get_device_name() if DEVICE != "cpu" else f"cpu, threads={torch.get_num_threads()}"
    print(f"model={a.model} batch={a.batch} steps={a.steps} device={where} compile={COMPILE}"
          + (" (each configuration against its own plain run, dynamo's cache cleared between)" if COMPILE else ""))
    print(f"plain mean step: {statistics.mean(next(iter(pairs.values()))['plain']) * 1e3:.1f} ms")
    targets = {"default, every step": 1.05, "default, every 10th step": 1.01}
    print(f"{'':28s} {'total time':>16s}  {'median step':>11s}  {'tview says':>10s} {'writer CPU':>10s}")
    for times in pairs.values():
        errors, medians, plain = spread(times), median_step_ratios(times), sum(times["plain"])
        for name, r in ratios(times).items():
            if name == "plain" and COMPILE:
                continue
            t = targets.get(name)
            verdict = "" if t is None else (f"  target <= {t:.2f}x: " + ("met" if r <= t else "MISSED"))
            said = "".join(f" {v / plain:+10.3f}" for v in reported[name]) if name in reported else " " * 22
            print(f"{name:28s} {r:6.3f}x +- {errors[name]:.3f}  {medians[name]:10.3f}x {said}{verdict}")
    print("tview says: its tview_time and its writer's tview_writer_cpu summed over the run, as shares of plain "
          "training's time")
    if a.short_runs:
        r, e = short_runs(a.model, a.batch, a.short_steps, a.short_runs)
        print(f"{'default every step, ' + str(a.short_steps) + ' steps + close()':28s} {r:6.3f}x +- {e:.3f}")


if __name__ == "__main__":
    main()
