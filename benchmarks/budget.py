"""The cost budget's overhead: tview's default preset scheduled every step with `budget=`, against plain training.

Each round: plain training timed alone, then a Recorder that trains alone for --adapt seconds (its stride settles)
and is timed alone, then plain again. Nothing else trains while the Recorder exists: it measures its share of the
wall time, which another configuration's steps in between would dilute (a first version alternated blocks of
plain and recorded steps; the recorder saw plain's blocks as its own wall time and took too small a stride).
Prints, per net, the recorded blocks' total time over the plain blocks' (the mean of the blocks around each), the
range of the rounds' ratios, the strides it settled at and the share it said it took (tview_time and its writer's
CPU over its timed blocks).
    python benchmarks/budget.py [--models resnet,convbn,3c3d] [--budget 0.05] [--device cpu|cuda] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

import tview
from benchmarks import overhead


def timed_block(trainer: overhead.Trainer, x, y, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(x, y)
    return time.perf_counter() - t0


def budget_round(base, x, y, tmp: str, budget: float, steps: int, adapt: float) -> tuple[float, float, int, float]:
    """Plain training timed alone, then a recorder (made after it) that trains alone for `adapt` seconds and is
    timed alone, closed, then plain again: (recorder's time, the two plain blocks' mean, its stride, the share tview
    said it took in its timed block). Nothing else runs while the recorder measures its own share."""
    plain = overhead.Trainer(base, None, tmp)
    timed_block(plain, x, y, 5)
    before = timed_block(plain, x, y, steps)
    rec = overhead.Trainer(base, lambda m, opt, d: tview.Recorder(m, tempfile.mkdtemp(dir=d), every=1, optimizer=opt,
                                                                   budget=budget), tmp)
    t_end = time.perf_counter() + adapt
    while time.perf_counter() < t_end:
        rec.step(x, y)
    first = rec.rec.current_step
    recorded = timed_block(rec, x, y, steps)
    run_dir = rec.rec.run_dir
    rec.close()
    after = timed_block(plain, x, y, steps)
    with tview.open_run(run_dir) as run:
        steps_at, stride = run.scalar("tview_stride")
        _, own = run.scalar("tview_time")
        _, writer = run.scalar("tview_writer_cpu")
    timed = np.asarray(steps_at) >= first
    said = (np.nansum(own[timed]) + np.nansum(writer[timed])) / recorded
    return recorded, (before + after) / 2, int(stride[-1]), float(said)


def measure(model_name: str, batch: int, budget: float, rounds: int, steps: int, adapt: float) -> dict:
    base, x, y = overhead.make(model_name, batch)
    with tempfile.TemporaryDirectory() as tmp:
        results = [budget_round(base, x, y, tmp, budget, steps, adapt) for _ in range(rounds)]
    ratios = [r[0] / r[1] for r in results]
    return {"ratio": sum(r[0] for r in results) / sum(r[1] for r in results), "spread": (min(ratios), max(ratios)),
            "stride": [r[2] for r in results], "share": statistics.mean(r[3] for r in results)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet,convbn,3c3d")
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600, help="timed steps per block")
    ap.add_argument("--adapt", type=float, default=6.0, help="seconds the recorder trains alone first")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    overhead.DEVICE = a.device
    where = torch.cuda.get_device_name() if a.device != "cpu" else f"cpu, threads={torch.get_num_threads()}"
    print(f"budget={a.budget:g} batch={a.batch} device={where}: default preset scheduled every step")
    print(f"{'model':8s} {'time':>8s} {'(rounds: min-max)':>19s} {'strides':>14s} {'tview says':>10s}")
    for name in a.models.split(","):
        r = measure(name, a.batch, a.budget, a.rounds, a.steps, a.adapt)
        lo, hi = r["spread"]
        strides = ",".join(map(str, r["stride"]))
        print(f"{name:8s} {r['ratio']:7.3f}x {f'({lo:.3f}-{hi:.3f})':>19s} {strides:>14s} {r['share']:10.1%}")
    print("time: recorded blocks over the plain blocks around them; tview says: tview_time and writer CPU over the "
          "recorded blocks' time")


if __name__ == "__main__":
    main()
