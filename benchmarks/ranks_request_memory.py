"""The memory of one Ranks-page read as a run grows: the peak Python allocations of one request's read
(tracemalloc: numpy's arrays included, HDF5's own C buffers not; the process's RSS after it says those) on a
synthetic run of --ranks ranks at each of --steps, each in a fresh process with the tview found in --code (this
checkout by default, or another one, e.g. `git archive <commit> | tar -x -C /tmp/before`, for a before/after).
The read runs once first (shards opened, headers kept, as in a server that follows the run), then is measured.

Reads: noise (app.pages.ranks.noise_views: the gradient noise scale of the whole network and of every layer),
stat (one per-layer statistic of the whole network across ranks), loss (the loss across ranks).

    python benchmarks/ranks_request_memory.py [--ranks 64] [--steps 250,1000,2500] [--code DIR] [--runs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READS = {"noise": "ranks.noise_views(run)",
         "stat": "ranks.read_across_ranks(run, 'local_grad_norm', ranks.WHOLE)",
         "loss": "ranks.read_across_ranks(run, ranks.SCALAR + 'loss', ranks.WHOLE)"}
MEASURE = """
import sys, tracemalloc
sys.path.insert(0, {code!r})
import tview
from app.pages import ranks
run = tview.open_run({run!r})
{read}
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
got = {read}
peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
tracemalloc.stop()
rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
print(peak, rss)
"""


def peak_mib(code: str, run: str, read: str) -> tuple[float, float]:
    """(the peak MiB allocated by one read (its second), the process's RSS after it) in a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE.format(code=code, run=run, read=read)], capture_output=True,
                         text=True, check=True, cwd=code, env=dict(os.environ, PYTHONPATH=code))
    peak, rss = out.stdout.strip().splitlines()[-1].split()
    return float(peak), float(rss)


def synthetic(root: str, steps: int, ranks: int, layers: int) -> str:
    """A closed synthetic run of `steps` steps under root (kept for reuse)."""
    from tview.store.synthetic import write_synthetic_run
    path = os.path.join(root, f"r{ranks}-s{steps}-l{layers}")
    if not os.path.isdir(path):
        write_synthetic_run(path, steps, ranks=ranks, layers=layers, channel_tail=10)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--steps", default="250,1000,2500")
    ap.add_argument("--code", default=REPO, help="the checkout whose tview and app are measured")
    ap.add_argument("--runs", default=None, help="folder for the synthetic runs (default: a temporary one)")
    a = ap.parse_args(argv)
    sys.path.insert(0, REPO)
    root = a.runs or tempfile.mkdtemp(prefix="tview-ranks-memory-")
    table = {}
    for steps in (int(s) for s in a.steps.split(",")):
        run = synthetic(root, steps, a.ranks, a.layers)
        table[steps] = {name: peak_mib(os.path.abspath(a.code), run, read) for name, read in READS.items()}
        print(f"{steps} steps: " + ", ".join(f"{k} peak {p:.2f} MiB (process RSS after {r:.0f})"
                                             for k, (p, r) in table[steps].items()), flush=True)
    print(json.dumps({"ranks": a.ranks, "layers": a.layers, "code": a.code, "peak_mib_and_rss_mib": table}))


if __name__ == "__main__":
    main()
