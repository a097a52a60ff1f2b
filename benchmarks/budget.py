"""The cost budget's overhead: tview's default preset scheduled every step with `budget=`, against plain training.

The two train their own copies of one net in one process, in alternating blocks of steps (not step by step as in
overhead.py: the budget measures tview's share of the wall time, which another configuration's steps in between
would dilute). The recorder first trains alone for --adapt seconds, long enough for its stride to settle. Prints,
per net, the median over block pairs of the recorded block's time over the plain block's, the stride tview settled
at and the share it measured itself (tview_time and its writer's CPU over the recorded blocks' time).
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


def measure(model_name: str, batch: int, budget: float, blocks: int, block_steps: int, adapt: float) -> dict:
    base, x, y = overhead.make(model_name, batch)
    with tempfile.TemporaryDirectory() as tmp:
        plain = overhead.Trainer(base, None, tmp)
        rec = overhead.Trainer(base, lambda m, opt, d: tview.Recorder(m, tempfile.mkdtemp(dir=d), every=1,
                                                                       optimizer=opt, budget=budget), tmp)
        timed_block(plain, x, y, 5)
        t_end = time.perf_counter() + adapt
        while time.perf_counter() < t_end:
            rec.step(x, y)
        first, ratios, recorded_time = rec.rec.current_step, [], 0.0
        for k in range(blocks):
            pair = (plain, rec) if k % 2 == 0 else (rec, plain)
            times = {id(t): timed_block(t, x, y, block_steps) for t in pair}
            ratios.append(times[id(rec)] / times[id(plain)])
            recorded_time += times[id(rec)]
        run_dir = rec.rec.run_dir
        rec.close()
        with tview.open_run(run_dir) as run:
            steps, stride = run.scalar("tview_stride")
            _, own = run.scalar("tview_time")
            _, writer = run.scalar("tview_writer_cpu")
        timed = np.asarray(steps) >= first
        share = (np.nansum(own[timed]) + np.nansum(writer[timed])) / recorded_time
        return {"ratio": statistics.median(ratios), "spread": (min(ratios), max(ratios)), "stride": int(stride[-1]),
                "share": float(share)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet,convbn,3c3d")
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--block-steps", type=int, default=100)
    ap.add_argument("--adapt", type=float, default=6.0, help="seconds the recorder trains alone first")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    overhead.DEVICE = a.device
    where = torch.cuda.get_device_name() if a.device != "cpu" else f"cpu, threads={torch.get_num_threads()}"
    print(f"budget={a.budget:g} batch={a.batch} device={where}: default preset scheduled every step")
    print(f"{'model':8s} {'time':>8s} {'(min-max of block pairs)':>25s} {'stride':>6s} {'tview says':>10s}")
    for name in a.models.split(","):
        r = measure(name, a.batch, a.budget, a.blocks, a.block_steps, a.adapt)
        lo, hi = r["spread"]
        print(f"{name:8s} {r['ratio']:7.3f}x {f'({lo:.3f}-{hi:.3f})':>25s} {r['stride']:6d} {r['share']:10.1%}")
    print("time: median over block pairs of recorded over plain; tview says: tview_time and writer CPU over the "
          "recorded blocks' time")


if __name__ == "__main__":
    main()
