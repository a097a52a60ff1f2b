"""Memory the Recorder holds and the peak of its recorded steps, as multiples of the parameters' memory.

Each net (SmallResNet, ConvBNNet, 3C3D, a ResNet-18-sized CNN; 32x32 inputs) is trained a few steps without tview
(optimizer state and autograd buffers exist), then a plain step's high-water mark is taken, the Recorder is made
and training goes on recorded every step. Per net and configuration, each in a fresh process, as multiples of
the parameters' bytes: the memory held at Recorder() and the peak while it was made; held after the first
(detail) recorded step and after 10 more, written (flushed); and what the recorded steps add to the process's
high-water mark over a plain step's (held memory plus each step's temporaries: the issue's "Recorder plus a
recorded step's peak"). Below each line, what the held memory is made of: the weight copy, the activation
statistics' cached per-value indexes, library pages (file-backed: code faulted in by first use), the rest.
Configurations: `params` is the parameter side alone (default preset without activation statistics and
snapshots), `default` the whole Recorder with the default preset, `full` every step a detail step.

What the CPU figures measure: resident memory (RSS, /proc/self/statm) and its high-water mark (VmHWM, reset
by writing 5 to /proc/self/clear_refs). RSS counts memory the allocator keeps after it was freed: glibc returns
large blocks to the system only when they came from mmap, and raises its mmap threshold (up to 32 MiB) after
such a block is freed, so later tensors of that size come from the heap and their pages stay resident when
freed (the training step's own gradients, freed and made again each step, move RSS by +-0.2x of a ResNet-18).
The children therefore run with a fixed threshold (MALLOC_MMAP_THRESHOLD_=131072, which turns the dynamic one
off): every large tensor is its own mapping, returned when freed, and RSS follows what is alive. `--malloc glibc`
keeps glibc's default. Memory read from files (the kept initial weights) sits in the page cache, which is not
the process's RSS. With --device cuda the same from torch.cuda.memory_allocated and max_memory_allocated
(live tensors; the caching allocator's reserve, memory_reserved, is not counted). Usage:
    python benchmarks/memory.py [--device cpu|cuda] [--batch 8] [--models resnet18,...] [--configs params,default]
Target (issue "Modern training stack"): Recorder plus a recorded step's peak <= 2x the parameters' memory
(default preset), on a net whose parameters outweigh tview's fixed costs (the HDF5 writer, its thread, Python
objects: a few MiB, many times the smaller nets' parameters).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    "params": "parameter statistics alone (default preset without activation statistics, sentinels, snapshots)",
    "default": "default preset",
    "full": "full preset (every step a detail step)",
}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """The process's peak resident memory since start or since the last reset_peak()."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def file_rss() -> int:
    """Resident memory backed by files (libraries' code and data pages, faulted in by first use)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


def held_parts(rec) -> tuple[int, int]:
    """(bytes of the weight copy the parameter statistics keep, bytes of the activation statistics' cached
    per-value indexes): the two parts of what the Recorder holds that grow with the net."""
    ctx = rec.pctx
    copy = ctx.__dict__.get("copy") if ctx is not None else None
    index = getattr(rec, "_row_index", None)
    cached = list(index.cache.values()) if index is not None else []
    flat = [x for v in cached for x in (v if isinstance(v, tuple) else (v,))]
    return ((copy.numel() * copy.element_size() if copy is not None else 0),
            sum(x.numel() * x.element_size() if isinstance(x, torch.Tensor) else getattr(x, "nbytes", 0)
                for x in flat))


def reset_peak() -> None:
    """Peak resident memory := resident memory now (Linux: writing 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def recorder(config: str, model, opt, run_dir: str):
    import tview
    from tview.hooks.schedules import get_preset
    if config == "params":
        return tview.Recorder(model, run_dir, every=1, optimizer=opt, snapshot_every=[],
                              preset=get_preset("default", activations=False, channels=False, sentinels=False))
    return tview.Recorder(model, run_dir, every=1, optimizer=opt, preset=config)


class Meter:
    """(resident bytes, CUDA bytes allocated) now and at their high-water marks since the last reset."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def reset(self) -> None:
        reset_peak()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def now(self) -> tuple[int, int]:
        return rss(), torch.cuda.memory_allocated() if self.cuda else 0

    def high(self) -> tuple[int, int]:
        return peak_rss(), torch.cuda.max_memory_allocated() if self.cuda else 0


def measure(config: str, device: str, batch: int, net: str) -> dict:
    """{'param_bytes', then per point: (resident bytes, device bytes)} for one net and configuration."""
    forced = os.environ.get("TVIEW_FORCE_DEVICE_PATH")
    from launches import MODELS  # (it sets TVIEW_FORCE_DEVICE_PATH for itself: put back as it was)
    if forced is None:
        os.environ.pop("TVIEW_FORCE_DEVICE_PATH", None)
    import tview  # noqa: F401  (imported before the baseline, as a training script would: modules are no part of it)
    torch.manual_seed(0)
    model = MODELS[net]().to(device)
    x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    cuda = device == "cuda"
    meter = Meter(cuda)

    def step(rec=None):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if rec is not None:
            rec.step()
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    base, base_file = meter.now(), file_rss()
    meter.reset()
    step()
    plain_peak = meter.high()  # a plain training step's high-water mark
    minus = lambda a, b: (a[0] - b[0], a[1] - b[1])
    out = {"param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    with tempfile.TemporaryDirectory() as tmp:
        meter.reset()
        rec = recorder(config, model, opt, os.path.join(tmp, "run"))
        out["recorder"], out["setup_peak"] = minus(meter.now(), base), minus(meter.high(), base)
        meter.reset()
        step(rec)
        out["first_step"] = minus(meter.now(), base)
        for _ in range(10):
            step(rec)
        rec.flush()  # what the writer holds once it has written (its first write brings HDF5's own memory)
        out["after_11"] = minus(meter.now(), base)
        out["copy"], out["act_index"] = held_parts(rec)
        out["file_pages"] = file_rss() - base_file
        out["peak"] = minus(meter.high(), plain_peak)  # what recorded steps add to a plain step's high-water mark
        rec.close()
    return out


def held_line(r: dict, which: int) -> str:
    """What the memory held after 11 steps is made of, as multiples of the parameters' bytes."""
    p = r["param_bytes"]
    rest = r["after_11"][which] - r["copy"] - r["act_index"] - (r["file_pages"] if which == 0 else 0)
    files = f", library pages {r['file_pages'] / p:.2f}x" if which == 0 else ""
    return (f"held after 11 steps: weight copy {r['copy'] / p:.2f}x, activation value indexes "
            f"{r['act_index'] / p:.2f}x{files}, other {rest / p:.2f}x (HDF5, Python, small buffers)")


def child_env(malloc: str) -> dict:
    env = dict(os.environ)
    if malloc == "fixed":  # see the docstring: RSS then follows the memory alive, not glibc's keeping of it
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--models", default="resnet,convbn,3c3d,resnet18")
    ap.add_argument("--configs", default="params,default")
    ap.add_argument("--malloc", choices=("fixed", "glibc"), default="fixed")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(measure(args.one[1], args.device, args.batch, args.one[0])))
        return 0
    keys = ("recorder", "setup_peak", "first_step", "after_11", "peak")
    what = "CUDA memory (allocated)" if args.device == "cuda" else f"resident memory, malloc {args.malloc}"
    print(f"{'net':9} {'config':8} {'params':>9} {'Recorder()':>10} {'its peak':>9} {'1st step':>9} {'11 steps':>9} "
          f"{'step peak':>9}   (multiples of the parameters' bytes; {what})")
    ok = True
    for net in args.models.split(","):
        for config in args.configs.split(","):
            done = subprocess.run([sys.executable, __file__, "--one", net, config, "--device", args.device,
                                   "--batch", str(args.batch)], capture_output=True, text=True, check=True,
                                  env=child_env(args.malloc))
            r = json.loads(done.stdout.strip().splitlines()[-1])
            which = 1 if args.device == "cuda" else 0
            m = {k: r[k][which] / r["param_bytes"] for k in keys}
            if net == "resnet18" and config == "default":
                ok &= max(m["after_11"], m["peak"]) <= 2.0
            print(f"{net:9} {config:8} {r['param_bytes'] / 2**20:>5.1f} MiB "
                  + " ".join(f"{m[k]:>8.2f}x" for k in keys)
                  + f"   ({r['peak'][which] / 2**20:.1f} MiB at the step peak)")
            print(" " * 20 + held_line(r, which))
    for config in args.configs.split(","):
        print(f"  {config}: {CONFIGS.get(config, '')}")
    print("target (resnet18, default: held and step peak <= 2x):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
