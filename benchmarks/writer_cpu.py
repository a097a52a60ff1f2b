"""The writer thread's CPU per record, split into finalize (probe results to table rows), write (HDF5) and flush.

On a host-bound GPU step every millisecond of it holds the GIL against the training thread (see
docs/benchmarks.md, the H200 section), so it is tview's cost there whatever the GPU does. Trains each net with
the default preset recording every step (a detail step every 10th record), then prints per record the
writer's CPU in each part, and beside it the plain training step's time measured in the same run (the ratio
is what the writer would add to a host-bound step). Usage:
    python benchmarks/writer_cpu.py [--models resnet,convbn,3c3d] [--steps 400] [--batch 8] [--device-path]
        [--device cuda] [--compile inductor]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet,convbn,3c3d")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device-path", action="store_true", help="TVIEW_FORCE_DEVICE_PATH=1 (a GPU's code path)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--compile", default=None, metavar="BACKEND", help="train torch.compile(model, backend=BACKEND)")
    a = ap.parse_args(argv)
    if a.device_path:
        os.environ["TVIEW_FORCE_DEVICE_PATH"] = "1"  # before tview is imported
    import torch
    torch.set_num_threads(1)
    print(f"{'net':8} {'records':>7} {'finalize':>9} {'write':>7} {'flush':>7} {'writer':>7} ms a record"
          f"   {'plain step':>10} ms   writer / step")
    for name in a.models.split(","):
        split, plain = writer_split(name, a.steps, a.batch, a.compile)
        n = split["records"]
        part = {k: split[k] / n * 1e3 for k in ("finalize", "write", "flush")}
        total = sum(part.values())
        print(f"{name:8} {n:>7} {part['finalize']:>9.3f} {part['write']:>7.3f} {part['flush']:>7.3f} {total:>7.3f}"
              f"               {plain * 1e3:>10.3f}      {total / (plain * 1e3):.3f}x")
    return 0


def writer_split(name: str, steps: int, batch: int, backend: str | None = None) -> tuple[dict, float]:
    """(the writer's cpu_split after `steps` recorded steps, a plain training step's seconds, median of 50)."""
    import tview
    from benchmarks import overhead
    overhead.COMPILE = backend
    base, x, y = overhead.make(name, batch)
    with tempfile.TemporaryDirectory() as tmp:
        plain = overhead.Trainer(base, None, tmp)
        times = sorted(plain.step(x, y) for _ in range(60))[5:55]
        recorded = overhead.Trainer(base, lambda m, opt, folder: tview.Recorder(m, folder, every=1, optimizer=opt), tmp)
        for _ in range(steps):
            recorded.step(x, y)
        recorded.close()
        split = dict(recorded.rec._writer.cpu_split)
    return split, times[len(times) // 2]


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
