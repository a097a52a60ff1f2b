"""Where a recorded step's time goes on a GPU: host time per step (until the step's Python returns, before any
synchronize), wall time per step (synchronized), and the torch profiler's top ops of recorded steps.

Plain training and tview's default preset every step, the same net; prints per configuration the host and
wall milliseconds per step, then the profiler's tables (self CPU time, self device time) for recorded steps.
A step whose host time is near its wall time is host-bound: any Python tview adds is added to the step.
    python benchmarks/gpu_profile.py [--model resnet] [--batch 128] [--steps 60]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
import torch.nn.functional as F

import tview
from benchmarks.overhead import MODELS


def train_steps(model, opt, x, y, rec, steps):
    """`steps` training steps; returns (host seconds per step, wall seconds per step)."""
    host = 0.0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        h0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss=loss)
        host += time.perf_counter() - h0
    torch.cuda.synchronize()
    return host / steps, (time.perf_counter() - t0) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=tuple(MODELS), default="resnet")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=1)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    cls, shape = MODELS[a.model]
    base = cls().cuda()
    x = torch.randn(a.batch, *shape, device="cuda")
    y = torch.randint(0, 10, (a.batch,), device="cuda")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("plain", "recorded", "plain again"):
            model = copy.deepcopy(base)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            rec = tview.Recorder(model, tmp + "/" + name.replace(" ", "_"), optimizer=opt, every=a.every) \
                if name == "recorded" else None
            train_steps(model, opt, x, y, rec, 10)
            runs[name] = train_steps(model, opt, x, y, rec, a.steps)
            if rec is not None:
                acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                with torch.profiler.profile(activities=acts) as prof:
                    train_steps(model, opt, x, y, rec, 20)
                rec.close()
    print(f"model={a.model} batch={a.batch} every={a.every} device={torch.cuda.get_device_name()}")
    for name, (host, wall) in runs.items():
        print(f"{name:12s} host {host * 1e3:7.3f} ms/step   wall {wall * 1e3:7.3f} ms/step")
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
