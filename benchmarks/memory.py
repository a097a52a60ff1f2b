"""Memory the Recorder holds and the peak of its recorded steps, as multiples of the parameters' memory.

A ResNet-18-sized CNN (11.2M parameters, 32x32 inputs) is trained a few steps without tview (optimizer state
and autograd buffers exist), then the Recorder is made and training goes on recorded every step. Printed per
configuration, each in a fresh process, as multiples of the parameters' bytes: the growth of resident memory
at Recorder() and the peak while it was made, after the first (detail) recorded step and after 10 more, and
the peak over those 11 recorded steps (VmHWM, reset after Recorder()); with --device cuda the same from
torch.cuda.memory_allocated and max_memory_allocated. Usage:
    python benchmarks/memory.py [--device cpu|cuda] [--batch 8] [--configs params,default,full]
Target (issue "Modern training stack"): Recorder plus a recorded step's peak <= 2x the parameters' memory.
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
    "params": "parameter statistics alone (default preset without activations and snapshots)",
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


def reset_peak() -> None:
    """Peak resident memory := resident memory now (Linux: writing 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def recorder(config: str, model, opt, run_dir: str):
    import tview
    from tview.hooks.schedules import get_preset
    if config == "params":
        return tview.Recorder(model, run_dir, every=1, optimizer=opt, snapshot_every=[],
                              preset=get_preset("default", activations=False, channels=False))
    return tview.Recorder(model, run_dir, every=1, optimizer=opt, preset=config)


def measure(config: str, device: str, batch: int) -> dict:
    """{'param_bytes', then per point: (resident growth, device growth)} for one configuration."""
    forced = os.environ.get("TVIEW_FORCE_DEVICE_PATH")
    from launches import ResNet18  # (it sets TVIEW_FORCE_DEVICE_PATH for itself: put back as it was)
    if forced is None:
        os.environ.pop("TVIEW_FORCE_DEVICE_PATH", None)
    torch.manual_seed(0)
    model = ResNet18().to(device)
    x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(rec=None):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if rec is not None:
            rec.step()
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    reset_peak()
    base = rss()
    base_dev = torch.cuda.memory_allocated() if cuda else 0
    point = lambda: (rss() - base, (torch.cuda.memory_allocated() - base_dev) if cuda else 0)
    out = {"param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    with tempfile.TemporaryDirectory() as tmp:
        rec = recorder(config, model, opt, os.path.join(tmp, "run"))
        out["recorder"] = point()
        out["setup_peak"] = (peak_rss() - base, (torch.cuda.max_memory_allocated() - base_dev) if cuda else 0)
        reset_peak()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        step(rec)
        out["first_step"] = point()
        for _ in range(10):
            step(rec)
        out["after_11"] = point()
        out["peak"] = (peak_rss() - base, (torch.cuda.max_memory_allocated() - base_dev) if cuda else 0)
        rec.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(measure(args.one, args.device, args.batch)))
        return 0
    keys = ("recorder", "setup_peak", "first_step", "after_11", "peak")
    print(f"{'config':8} {'Recorder()':>10} {'its peak':>9} {'1st step':>9} {'11 steps':>9} {'step peak':>9}"
          "   (growth / parameter bytes; resident memory, or CUDA memory with --device cuda)")
    ok = True
    for config in args.configs.split(","):
        done = subprocess.run([sys.executable, __file__, "--one", config, "--device", args.device,
                               "--batch", str(args.batch)], capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        which = 1 if args.device == "cuda" else 0
        m = {k: r[k][which] / r["param_bytes"] for k in keys}
        ok &= max(m["after_11"], m["peak"]) <= 2.0 or config != "default"
        print(f"{config:8} " + " ".join(f"{m[k]:>8.2f}x" for k in keys) + f"   {CONFIGS.get(config, '')}")
    print(f"parameters: {r['param_bytes'] / 2**20:.1f} MiB;", "target met" if ok else "target NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
