"""Where a recorded step's time goes on a GPU: host time per step (until the step's Python returns, before any
synchronize), wall time per step (synchronized), the CPU time of the training thread's parts and of tview's
writer thread, and the torch profiler's top ops of recorded steps.

Plain training and tview's default preset every step, the same net; prints per configuration the host and
wall milliseconds per step and the thread CPU split (forward with its hooks, rec.step, the writer thread),
then the profiler's tables (self CPU time, self device time) for recorded steps. A step whose host time is
near its wall time is host-bound: any Python tview adds, on any thread (the GIL), is added to the step.
    python benchmarks/gpu_profile.py [--model resnet] [--batch 128] [--steps 60] [--every 1] [--no-profile]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import threading
import time

import torch
import torch.nn.functional as F

import tview
from benchmarks.overhead import MODELS


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def thread_cpu(native_id: int) -> float:
    """A thread's CPU seconds so far (Linux schedstat)."""
    with open(f"/proc/self/task/{native_id}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def train_steps(model, opt, x, y, rec, steps):
    """`steps` training steps; returns per step (host s, wall s, forward CPU s, rec.step CPU s, other threads'
    CPU s)."""
    host = fwd = rs = 0.0
    others = [t.native_id for t in threading.enumerate() if t is not threading.main_thread()]
    o0 = sum(thread_cpu(t) for t in others)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        h0, c0 = time.perf_counter(), time.thread_time()
        out = model(x)
        c1 = time.thread_time()
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        c2 = time.thread_time()
        if rec is not None:
            rec.step(loss=loss)
        host += time.perf_counter() - h0
        fwd, rs = fwd + c1 - c0, rs + time.thread_time() - c2
    sync()
    wall = time.perf_counter() - t0
    return tuple(v / steps for v in (host, wall, fwd, rs, sum(thread_cpu(t) for t in others) - o0))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=tuple(MODELS), default="resnet")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--device", default="cuda", help="cuda (cpu: to try the script)")
    ap.add_argument("--no-profile", action="store_true", help="only the timings (no torch profiler tables)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    cls, shape = MODELS[a.model]
    base = cls().to(a.device)
    x = torch.randn(a.batch, *shape, device=a.device)
    y = torch.randint(0, 10, (a.batch,), device=a.device)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("plain", "recorded", "plain again"):
            model = copy.deepcopy(base)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            rec = tview.Recorder(model, tmp + "/" + name.replace(" ", "_"), optimizer=opt, every=a.every) \
                if name == "recorded" else None
            train_steps(model, opt, x, y, rec, 10)
            runs[name] = train_steps(model, opt, x, y, rec, a.steps)
            if rec is not None and not a.no_profile:
                acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                with torch.profiler.profile(activities=acts) as prof:
                    train_steps(model, opt, x, y, rec, 20)
            if rec is not None:
                rec.close()
    where = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"model={a.model} batch={a.batch} every={a.every} device={where} tview={tview.__file__}")
    for name, (host, wall, fwd, rs, other) in runs.items():
        print(f"{name:12s} host {host * 1e3:7.3f} ms/step   wall {wall * 1e3:7.3f}   CPU: forward {fwd * 1e3:6.3f}"
              f"  rec.step {rs * 1e3:6.3f}  other threads {other * 1e3:6.3f}")
    if a.no_profile:
        return
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=30))
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            print(events.table(sort_by=key, row_limit=20))
            break
        except (AttributeError, KeyError, ValueError):
            continue


if __name__ == "__main__":
    main()
