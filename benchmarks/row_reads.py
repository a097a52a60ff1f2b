"""Row reads and diagnosis on one many-rank run, timed in this process with the tview found in --code (this
checkout by default, or another one, e.g. `git worktree add /tmp/before <commit>`, for a before/after).

Prints one JSON object, seconds (warm the page cache first, e.g. `cat RUN/* > /dev/null`):
  network       the network of every rank at the middle step (tview.render.scene.network: what ParaView's mean
                and spread networks read per rank), over --network-ranks ranks (all by default)
  stat_first    one statistic of one layer, `run.stat(name, layer=L, rank=r)` for every rank (the README's way), the
                first read of a run just opened in this process (each shard's header read once); stat_first_cpu: its
                CPU seconds (with --cold, the run's files are dropped from the page cache first: posix_fadvise)
  stat_loop     the same again, the run still open (least of 2)
  stat_ranks    the same in one call, `run.stat(name, layer=L, ranks=run.ranks)`, in one process (None where the
                checkout has no `ranks=`)
  diagnose      `tview.diagnose(run)` (the rank summaries read as the command line reads them); diagnose_cpu: the
                CPU seconds of this process and its children meanwhile (a figure less moved by a busy machine)

    python benchmarks/row_reads.py --run RUN [--code DIR] [--parts network,stat,diagnose] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAT, LAYER = "grad_norm", 3


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _stat_ranks(run) -> float | None:
    from tview.store import parallel
    parallel.MAX_PROCESSES = 1
    try:
        run.stat(STAT, layer=LAYER, ranks=run.ranks[:1])
    except TypeError:
        return None  # a checkout without ranks=
    return _best(lambda: run.stat(STAT, layer=LAYER, ranks=run.ranks), 2)


def _cpu() -> float:
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def drop_pages(path: str) -> None:
    """Drop the run's files from the page cache (the next read comes from the disk)."""
    for name in os.listdir(path):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _first_stat(run) -> dict:
    t, cpu = time.perf_counter(), _cpu()
    for r in run.ranks:
        run.stat(STAT, layer=LAYER, rank=r)
    return {"stat_first": time.perf_counter() - t, "stat_first_cpu": _cpu() - cpu}


def _diagnose(path: str) -> dict:
    import tview
    t, cpu = time.perf_counter(), _cpu()
    with tview.open_run(path, skip_bad_shards=True) as run:
        found = tview.diagnose(run)
    return {"diagnose": time.perf_counter() - t, "diagnose_cpu": _cpu() - cpu, "findings": len(found),
            "finding_lines": [f"{f.kind} {f.rank} {f.layer} {f.step}" for f in found]}


def figures(path: str, parts: list[str], network_ranks: int | None) -> dict:
    import tview
    from tview.render import scene
    out = {"code": os.path.dirname(os.path.dirname(os.path.abspath(tview.__file__)))}
    if "diagnose" in parts:  # first: as the command line runs it, in a process that has read nothing
        out.update(_diagnose(path))
    with tview.open_run(path) as run:
        if "stat" in parts:
            out.update(_first_stat(run))
            out["stat_loop"] = _best(lambda: [run.stat(STAT, layer=LAYER, rank=r) for r in run.ranks], 2)
            out["stat_ranks"] = _stat_ranks(run)
        ranks = run.ranks[:network_ranks] if network_ranks else run.ranks
        step = int(run.steps(run.ranks[0])[len(run.steps(run.ranks[0])) // 2])
        if "network" in parts:
            out["network"] = _best(lambda: [scene.network(run, r, step) for r in ranks], 1)
            out["network_ranks"] = len(ranks)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--code", default=REPO, help="the checkout whose tview is timed")
    ap.add_argument("--parts", default="network,stat,diagnose")
    ap.add_argument("--network-ranks", type=int, default=None)
    ap.add_argument("--cold", action="store_true", help="drop the run's files from the page cache first")
    a = ap.parse_args(argv)
    if a.cold:
        drop_pages(a.run)
    sys.path.insert(0, os.path.abspath(a.code))
    print(json.dumps(figures(a.run, a.parts.split(","), a.network_ranks)))


if __name__ == "__main__":
    main()
