"""One series on every rank of a run at once, read in parallel processes when there are many ranks.

Opening a shard costs about half a millisecond of HDF5 work under its global lock, so threads cannot
share the load of 1024 shards; processes can. Beyond PARALLEL_FROM ranks the ranks are split between
forked processes (one per core, at most MAX_WORKERS), each opening its own shards.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from tview.errors import TviewError

PARALLEL_FROM = 128  # fewer ranks: read in this process (starting workers costs more than it saves)
MAX_WORKERS = 8


def _read(run, kind: str, name: str, layer, rank: int, max_points):
    """(steps, values) of one rank; empty arrays (and the reason) where the rank has none or is unreadable."""
    try:
        if kind == "scalar":
            return run.scalar(name, rank, max_points=max_points), None
        return run.stat(name, layer, rank, max_points=max_points), None
    except (KeyError, TviewError) as exc:
        return (np.zeros(0, dtype=np.int64), np.zeros(0)), str(exc.args[0] if exc.args else exc)


def _read_part(args) -> dict:
    """In a worker: open the run afresh (never the parent's HDF5 handles) and read its share of ranks."""
    path, kind, name, layer, ranks, max_points = args
    from tview.store.reader import open_run
    run = open_run(path, skip_bad_shards=True)
    try:
        return {rank: _read(run, kind, name, layer, rank, max_points) for rank in ranks}
    finally:
        run.close()


def _workers(n_ranks: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(MAX_WORKERS, cores) if n_ranks >= PARALLEL_FROM else 1


def series_across_ranks(run, kind: str, name: str, layer=None, ranks=None, max_points=None) -> dict[int, tuple]:
    """{rank: ((steps, values), problem or None)} of a scalar (kind "scalar") or a layer statistic (kind
    "stat") on the given ranks (default: every readable rank)."""
    ranks = list(run.ranks if ranks is None else ranks)
    workers = _workers(len(ranks))
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return {rank: _read(run, kind, name, layer, rank, max_points) for rank in ranks}
    parts = [(run.path, kind, name, layer, ranks[i::workers], max_points) for i in range(workers)]
    out: dict[int, tuple] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for part in pool.map(_read_part, parts):
            out.update(part)
    return {rank: out[rank] for rank in ranks}
