"""The runs under the folder the dashboard was started on: safe run ids, and open runs kept for reuse."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from tview.errors import TviewError
from tview.store.reader import Run, find_runs, open_run

MEMO_BYTES = 256 * 2**20  # what read results across ranks may hold in memory, all runs together
MEMO_WAIT = 600.0  # seconds a request waits for the same read already under way before reading it itself


def size_of(value) -> int:
    """Rough bytes held by a result (arrays by their buffers)."""
    if isinstance(value, np.ndarray):
        return value.nbytes + 100
    if isinstance(value, dict):
        return sum(size_of(k) + size_of(v) for k, v in value.items()) + 100
    if isinstance(value, (list, tuple)):
        return sum(size_of(v) for v in value) + 60
    return 64


def run_ids(root: str, folders: list[str]) -> dict[str, str]:
    """run id (path relative to root, '/'-separated; the folder's name if root is itself a run) -> folder."""
    root = os.path.abspath(root)
    ids = {}
    for folder in folders:
        rel = os.path.relpath(os.path.abspath(folder), root)
        ids[os.path.basename(root) if rel == "." else rel.replace(os.sep, "/")] = os.path.abspath(folder)
    return ids


def files_outside(folder: str, root: str) -> list[str]:
    """The manifest and shards of a run folder whose real path lies outside `root` (symbolic links out)."""
    real_root = os.path.realpath(root)
    names = [n for n in os.listdir(folder) if n == "run.tview" or (n.startswith("rank-") and n.endswith(".h5"))]
    paths = [os.path.join(folder, n) for n in sorted(names)] + [folder]
    return [p for p in paths if os.path.commonpath([os.path.realpath(p), real_root]) != real_root]


class RunCatalog:
    """Maps run ids the browser sends to run folders found under root. An id that was not found
    there (a path such as '../x' or '/etc') is refused: no URL or control reaches outside root."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise TviewError(f"{root}: no such folder")
        self._lock = threading.Lock()
        self._ids: dict[str, str] = {}
        self._open: dict[str, Run] = {}
        self._signature: dict[str, str] = {}  # run id -> what the last poll saw of it (steps, states per rank)
        self._memo: OrderedDict = OrderedDict()  # (run id, signature, key) -> result, least recently used first
        self._memo_bytes = 0
        self._running: dict[tuple, threading.Event] = {}  # (run id, key) being computed now
        self._last: dict[tuple, Any] = {}  # (run id, key) -> the last result of memo_or_last
        self.scan()

    def scan(self) -> list[str]:
        """Look for runs again (new runs appear while the app runs); returns the ids, sorted."""
        ids = run_ids(self.root, find_runs(self.root))
        with self._lock:
            self._ids = ids
        return sorted(ids)

    @property
    def ids(self) -> list[str]:
        return sorted(self._ids)

    def folder(self, run_id: str) -> str:
        if not isinstance(run_id, str) or run_id not in self._ids:
            self.scan()
        if not isinstance(run_id, str) or run_id not in self._ids:
            raise TviewError(f"no run {run_id!r} under {self.root}")
        folder = self._ids[run_id]
        outside = files_outside(folder, self.root)
        if outside:
            raise TviewError(f"{outside[0]}: resolves outside {self.root} (a symbolic link?); this run is not served")
        return folder

    def get(self, run_id: str) -> Run:
        """The open run (bad shards left out and listed in run.problems); shards that appeared since are picked up."""
        folder = self.folder(run_id)
        with self._lock:
            run = self._open.get(run_id)
            if run is None:
                run = self._open[run_id] = open_run(folder, skip_bad_shards=True)
            elif run.problems:
                run.refresh()
            return run

    def note_signature(self, run_id: str, signature) -> None:
        """What the poll saw of a run (run_signature): results read before it changed are not served again."""
        text = json.dumps(signature, sort_keys=True, default=str)
        with self._lock:
            if self._signature.get(run_id) != text:
                self._signature[run_id] = text
                for k in [k for k in self._memo if k[0] == run_id]:
                    self._memo_bytes -= self._memo.pop(k)[1]

    def memo(self, run_id: str, key: tuple, compute: Callable[[], Any]):
        """compute(), or its result from an earlier call with the same key while the run has not changed since
        the last poll (reads across 1024 ranks are read once per change, whichever page asks). One computation per
        run and key at a time: a call while it is under way waits for it, and takes its result when the run has not
        changed since (no pile-up of equal reads: a slow read of a growing run is not started again beside itself
        at each poll). Bounded by MEMO_BYTES; before the first poll of a run nothing is kept."""
        while True:
            with self._lock:
                full = (run_id, self._signature.get(run_id), key)
                hit = self._memo.get(full)
                if hit is not None:
                    self._memo.move_to_end(full)
                    return hit[0]
                under_way = self._running.get((run_id, key))
                if under_way is None:
                    if full[1] is not None:
                        self._running[(run_id, key)] = threading.Event()
                    break
            if not under_way.wait(MEMO_WAIT):
                return compute()  # the other request hangs: read it here (not kept)
        return self._compute(full, compute)

    def memo_or_last(self, run_id: str, key: tuple, compute: Callable[[], Any], missing=None):
        """memo(), except while the same run and key is being computed: then at once the last result kept for an
        earlier state of the run (`missing` if none), not a wait. For slow reads a page may show slightly stale
        (the diagnosis of a growing 1024-rank run): requests never queue behind them."""
        with self._lock:
            hit = self._memo.get((run_id, self._signature.get(run_id), key))
            if hit is None and (run_id, key) in self._running:
                return self._last.get((run_id, key), missing)
        value = self.memo(run_id, key, compute)
        with self._lock:
            self._last[(run_id, key)] = value
        return value

    def _compute(self, full_key: tuple, compute: Callable[[], Any]):
        try:
            value = compute()
            if full_key[1] is not None:
                self._keep(full_key, value)
            return value
        finally:
            with self._lock:
                done = self._running.pop((full_key[0], full_key[2]), None)
            if done is not None:
                done.set()

    def keep(self, run_id: str, key: tuple, value) -> None:
        """Keep `value` as memo(run_id, key)'s result for the run as the last poll saw it (a poll that read the
        rank summaries hands them to the pages this way)."""
        with self._lock:
            full = (run_id, self._signature.get(run_id), key)
        if full[1] is not None:
            self._keep(full, value)

    def _keep(self, full_key: tuple, value):
        size = size_of(value)
        with self._lock:
            if full_key[1] != self._signature.get(full_key[0]) or size > MEMO_BYTES:
                return
            old = self._memo.pop(full_key, None)
            self._memo_bytes += size - (old[1] if old else 0)
            self._memo[full_key] = (value, size)
            while self._memo_bytes > MEMO_BYTES:
                self._memo_bytes -= self._memo.popitem(last=False)[1][1]

    def forget(self, run_id: str):
        """Close a run so it is opened afresh next time (after its files were replaced)."""
        with self._lock:
            run = self._open.pop(run_id, None)
            for k in [k for k in self._last if k[0] == run_id]:
                del self._last[k]
        if run is not None:
            run.close()
