"""A real `torchrun --nproc_per_node=8` gloo run of a small CNN with one rank slowed, recorded by tview; then what
the dashboard's views name, from the same functions the pages call.

The slowed rank sleeps --delay seconds while it loads each batch (a slow disk, a busy host). Every rank records
its loss and two timings of its own as scalars: data_time (loading the batch) and compute_time (forward and
loss, before backward, where DDP's all-reduce makes every rank wait for the slowest). Under DDP the step time
(rec.step() to rec.step()) is the same on every rank: the all-reduce holds the fast ranks until the slow one
arrives, so the straggler shows in what a rank does before the all-reduce (the recorder's own busy_time: step
start to this rank's last local gradient), not in its step time.

    python benchmarks/straggler.py [--ranks 8] [--slow-rank 5] [--delay 0.03] [--steps 120] [--out runs/straggler]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def worker(a) -> None:
    """One rank, started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import tview
    from tview.demo import load_digits_tensors
    from tview.models import LeNet5

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(LeNet5())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    (x, y), _ = load_digits_tensors()
    gen = torch.Generator().manual_seed(1000 + rank)
    with tview.Recorder(ddp, a.out, every=1, optimizer=opt, config={"straggler": a.slow_rank}) as rec:
        for _ in range(a.steps):
            t0 = time.perf_counter()
            idx = torch.randint(len(x), (32,), generator=gen)
            xb, yb = x[idx], y[idx]
            if rank == a.slow_rank:
                time.sleep(a.delay)
            t1 = time.perf_counter()
            opt.zero_grad()
            loss = F.cross_entropy(ddp(xb), yb)
            t2 = time.perf_counter()
            loss.backward()
            opt.step()
            rec.step(loss=loss, data_time=t1 - t0, compute_time=t2 - t1)
    dist.destroy_process_group()


def train(a) -> float:
    """Run torchrun with this script as the worker; returns the seconds it took."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.ranks}", __file__,
           "--worker", "--out", a.out, "--slow-rank", str(a.slow_rank), "--delay", str(a.delay),
           "--steps", str(a.steps)]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def named_by_views(path: str) -> dict[str, dict[int, list[str]]]:
    """What each view names, rank -> why: the Ranks page's table and default statistic, the Scalars page's
    step_time, data_time and compute_time, and the overview's diagnosis (tview.diagnose, as the overview calls it)."""
    import numpy as np

    import tview
    from app.pages import overview
    from app.pages import ranks as ranks_page
    from tview.diagnose import diagnose
    from tview.render import ranks_view, summaries
    run = tview.open_run(path)
    table = ranks_page.summary(run, run.rank_summaries())
    out = {"Ranks page: table (median step time, first NaN)": {int(r): w for r, w in table["standouts"].items()}}
    _, values = summaries.stat_across_ranks(run, "local_grad_norm", None, ranks_page.POINTS)
    out["Ranks page: local_grad_norm of the whole network"] = ranks_view.standouts(run.ranks, values)
    for name in [n for n in ("step_time", "busy_time", "data_time", "compute_time", "loss")
                 if n in run.scalar_names(run.ranks[0])]:
        _, values = summaries.scalar_across_ranks(run, name, ranks_page.POINTS)
        out[f"Scalars / Ranks page: {name}"] = ranks_view.standouts(run.ranks, values)
        scale, unit = (1e3, " (ms)") if name.endswith("_time") else (1.0, "")
        print(f"  median {name} per rank{unit}: " + ", ".join(
            f"{r}: {scale * float(np.nanmedian(v)):.3g}" for r, v in zip(run.ranks, values)))
    out["Overview: diagnosis"] = {}
    for f in diagnose(run, overview.POINTS):
        if f.rank is not None:
            out["Overview: diagnosis"].setdefault(f.rank, []).append(f.kind)
    run.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--slow-rank", type=int, default=5)
    ap.add_argument("--delay", type=float, default=0.03, help="seconds the slow rank sleeps per batch")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one, removed)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a)
    keep = a.out is not None
    a.out = a.out or os.path.join(tempfile.mkdtemp(prefix="tview-straggler-"), "run")
    try:
        seconds = train(a)
        print(f"torchrun --nproc_per_node={a.ranks}: {a.steps} steps in {seconds:.1f} s, rank {a.slow_rank} "
              f"slowed by {a.delay * 1e3:.0f} ms a step", flush=True)
        named = named_by_views(a.out)
        print("\n| view | ranks named |\n|---|---|")
        for view, who in named.items():
            text = "; ".join(ranks_view_label(r, why) for r, why in sorted(who.items())) or "none"
            print(f"| {view} | {text} |")
        hit = [v for v, who in named.items() if a.slow_rank in who]
        print(f"\nthe slowed rank {a.slow_rank} is named by: {', '.join(hit) if hit else 'NO VIEW'}")
        return 0 if hit else 1
    finally:
        if not keep:
            shutil.rmtree(os.path.dirname(a.out), ignore_errors=True)


def ranks_view_label(rank: int, why: list[str]) -> str:
    from tview.render.ranks_view import standout_label
    return standout_label(rank, why)


if __name__ == "__main__":
    sys.exit(main())
