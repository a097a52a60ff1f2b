"""Reads across many ranks split over forked processes: HDF5 runs one call at a time in a process, so a read
that opens hundreds of shards goes about as many times faster as there are cores.

Only a process with one thread forks (a forked child of a threaded process, e.g. a web server, could inherit
a lock another thread held); others read in one process. Each child reads its share and sends it back pickled
through a pipe, then leaves with os._exit (HDF5's teardown is not run on files the parent still uses). A child
that fails or sends nothing has its share read again in the parent, so the result never depends on the fork.
"""

from __future__ import annotations

import os
import pickle
import threading
import warnings
from typing import Callable

PARALLEL_FROM = 256  # ranks; below this a read takes well under the cost of forking
MAX_PROCESSES = 8

Read = Callable[[list[int]], dict]


def processes_for(n_ranks: int) -> int:
    """How many processes share a read of n_ranks ranks (1: read here)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_ranks < PARALLEL_FROM or cores < 2 or threading.active_count() > 1 or not hasattr(os, "fork"):
        return 1
    return min(cores, MAX_PROCESSES)


def shares(ranks: list[int], n: int) -> list[list[int]]:
    """Contiguous shares of the ranks, as equal as can be."""
    return [ranks[i * len(ranks) // n:(i + 1) * len(ranks) // n] for i in range(n)]


def _child(share: list[int], read: Read, write_fd: int, extra: Callable[[list[int]], dict]) -> None:
    status = 1
    try:
        payload = pickle.dumps((read(share), extra(share)), protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write_fd, "wb") as f:
            f.write(payload)
        status = 0
    finally:
        os._exit(status)


def _collect(pid: int, read_fd: int) -> tuple | None:
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        return None
    try:
        return pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, ValueError):
        return None


def read_across(ranks: list[int], read: Read, extra: Callable[[list[int]], dict] = lambda share: {},
                merge_extra: Callable[[dict], None] = lambda found: None) -> dict:
    """read(ranks) -> {rank: value}, computed in several processes when it pays. extra(share) is what a child
    learned besides (e.g. problems of damaged shards), handed to merge_extra in the parent."""
    n = processes_for(len(ranks))
    if n == 1:
        return read(ranks)
    parts = shares(ranks, n)
    children = []
    for share in parts[1:]:
        read_fd, write_fd = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12 warns on any fork of a process with OS threads; those here are numpy's and torch's
            # idle pools (no Python thread runs: processes_for), and the child calls HDF5 and pickle only
            warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(share, read, write_fd, extra)
        os.close(write_fd)
        children.append((share, pid, read_fd))
    out = read(parts[0])
    for share, pid, read_fd in children:
        got = _collect(pid, read_fd)
        if got is None:
            out.update(read(share))
            continue
        out.update(got[0])
        merge_extra(got[1])
    return {r: out[r] for r in ranks}
