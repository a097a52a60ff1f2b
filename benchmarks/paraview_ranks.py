"""ParaView on a many-rank run: `tview render --processes N` (`mpirun -np N pvbatch`, each process reading only its
own share of the ranks, reductions and rank rows exchanged over MPI) timed at several N side by side.

Renders the rank x step field of one statistic and the mean and spread networks of --run, each at every N, and
the same views of a one-rank run (a start-up: pvbatch, MPI, Xvfb, the plugin, one render) so that what the
reading and reduction cost shows apart. Also checks that every N drew the same picture as -np 1.

    python benchmarks/paraview_ranks.py [--run /tmp/r1024] [--np 1,2,4] [--stat grad_norm] [--repeat 1]
                                        [--views field,mean,spread]

Prints a markdown table to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

ALL_CASES = {"field": ("rank x step field", dict(view="rank_field")),
             "mean": ("mean network", dict(view="network", ranks="mean")),
             "spread": ("spread network", dict(view="network", ranks="spread"))}
CASES = tuple(ALL_CASES.values())


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="/tmp/r1024", help="a many-rank run (made by "
                    "tview.store.synthetic.write_synthetic_run(path, 1000, ranks=1024, layers=20, channel_tail=100))")
    ap.add_argument("--np", default="1,2,4", help="process counts to compare, comma separated")
    ap.add_argument("--stat", default="grad_norm", help="the rank x step field's statistic (of the first layer)")
    ap.add_argument("--repeat", type=int, default=1, help="renders per case and N (the least time is kept)")
    ap.add_argument("--views", default=",".join(ALL_CASES), help=f"which views, of {','.join(ALL_CASES)}")
    ap.add_argument("--limit", type=float, default=240, help="seconds after which a render is stopped and started "
                                                             "again (ParaView 5.11 under mpirun hangs now and then)")
    return ap.parse_args()


def tiny_run(folder: str) -> str:
    """A one-rank run: rendering it is pvbatch's start-up and a render, with (almost) nothing to read."""
    from tview.store.synthetic import write_synthetic_run
    return write_synthetic_run(os.path.join(folder, "tiny"), 10, ranks=1, layers=2, channels=4, channel_tail=10)


STUCK = []  # renders stopped and started again (the launcher's own retries included: X drops, hung pictures)


def timed(run: str, out: str, processes: int, stat: str, limit: float, **view) -> float:
    """Seconds of one render; a render still running after `limit` s is stopped, noted and started again."""
    from tview.errors import TviewError
    from tview.render.paraview_launch import render
    array = stat if view["view"] == "rank_field" else None
    for attempt in range(3):
        started = time.perf_counter()
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):  # the launcher says when it starts a render again
                render(run, out, processes=processes, array=array, timeout=limit, **view)
            return time.perf_counter() - started
        except TviewError as exc:
            if "still running after" not in str(exc) or attempt == 2:
                raise
            STUCK.append(f"{view} -np {processes}: stopped at {limit:.0f} s")
            print(f"  stopped after {limit:.0f} s, starting again: {view} -np {processes}", file=sys.stderr, flush=True)
        finally:
            for line in said.getvalue().splitlines():
                if "trying again" in line:
                    STUCK.append(f"{view} -np {processes}: {line.split(';')[0].removeprefix('tview: ')}")
                    print(f"  {line}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def same_picture(a: str, b: str) -> str:
    """'same' or the share of pixels that differ between two PNGs."""
    import numpy as np
    from PIL import Image
    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a, b))
    if x.shape != y.shape:
        return f"sizes differ {x.shape} {y.shape}"
    differ = (np.abs(x - y).max(axis=2) > 8).mean()
    return "same" if differ == 0 else f"{differ:.2%} of pixels differ"


def measure(a, counts: list[int], folder: str) -> tuple[dict, dict]:
    """{(case, n): seconds} for the run and for the tiny run (start-up), and picture checks against -np 1."""
    tiny = tiny_run(folder)
    times, checks = {}, {}
    for rep in range(a.repeat):
        for name, view in CASES:
            for which, run in (("run", a.run), ("start-up", tiny)):
                for n in counts:  # side by side: every N of one case before the next case
                    out = os.path.join(folder, f"{which}-{view['view']}-{view.get('ranks', 'one')}-{n}.png")
                    t = timed(run, out, n, a.stat, a.limit, **view)
                    key = (which, name, n)
                    times[key] = min(t, times.get(key, t))
                    print(f"  {which:8s} {name:18s} -np {n}: {t:6.1f} s", file=sys.stderr, flush=True)
                    if which == "run" and n != counts[0] and rep == 0:
                        checks[(name, n)] = same_picture(out.replace(f"-{n}.png", f"-{counts[0]}.png"), out)
    return times, checks


def table(a, counts: list[int], times: dict, checks: dict) -> str:
    import tview
    run = tview.open_run(a.run)
    n_ranks, n_steps, n_layers = len(run.ranks), len(run.steps(run.ranks[0])), len(run.layers)
    first = counts[0]
    head = ["", *[f"-np {n}" for n in counts], *[f"{first} / {n}" for n in counts[1:]]]
    rows = []
    for name, _ in CASES:
        total = [times[("run", name, n)] for n in counts]
        start = [times[("start-up", name, n)] for n in counts]
        work = [t - s for t, s in zip(total, start)]
        rows.append([f"{name}: whole render", *[f"{t:.1f} s" for t in total],
                     *[f"{total[0] / t:.2f}x" for t in total[1:]]])
        rows.append([f"{name}: start-up (1-rank run)", *[f"{s:.1f} s" for s in start], *["" for _ in counts[1:]]])
        rows.append([f"{name}: reading + reduction", *[f"{w:.1f} s" for w in work],
                     *[f"{work[0] / w:.2f}x" if w > 0 < work[0] else "" for w in work[1:]]])
    lines = [f"ParaView, {n_ranks} ranks x {n_steps} steps x {n_layers} layers ({a.run}); `tview render "
             f"--processes N` = `mpirun --oversubscribe -np N pvbatch`, on this machine's {os.cpu_count()} cores "
             f"(N above that is oversubscribed); least of {a.repeat}; rank x step field of {a.stat}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Pictures against -np 1: " + "; ".join(f"{name} -np {n}: {v}" for (name, n), v in checks.items())]
    lines += [f"Renders started again (time of both tries counted; the least of --repeat kept): {len(STUCK)}"
              + (f" ({'; '.join(STUCK)})" if STUCK else "")]
    return "\n".join(lines)


def main() -> None:
    global CASES
    a = parse()
    CASES = tuple(ALL_CASES[v] for v in a.views.split(","))
    counts = [int(v) for v in a.np.split(",") if v.strip()]
    if not counts or min(counts) < 1:
        sys.exit("--np: process counts of at least 1, e.g. 1,2,4")
    if not os.path.isfile(os.path.join(a.run, "run.tview")):
        sys.exit(f"{a.run}: not a tview run (make one with tview.store.synthetic.write_synthetic_run)")
    folder = tempfile.mkdtemp(prefix="tview-pv-ranks-")
    try:
        load = os.getloadavg()[0]
        times, checks = measure(a, counts, folder)
        print(table(a, counts, times, checks))
        print(f"\nLoad average (1 min) {load:.2f} before, {os.getloadavg()[0]:.2f} after.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
