"""The runs under the folder the dashboard was started on: safe run ids, and open runs kept for reuse."""

from __future__ import annotations

import os
import threading

from tview.errors import TviewError
from tview.store.reader import Run, find_runs, open_run


def run_ids(root: str, folders: list[str]) -> dict[str, str]:
    """run id (path relative to root, '/'-separated; the folder's name if root is itself a run) -> folder."""
    root = os.path.abspath(root)
    ids = {}
    for folder in folders:
        rel = os.path.relpath(os.path.abspath(folder), root)
        ids[os.path.basename(root) if rel == "." else rel.replace(os.sep, "/")] = os.path.abspath(folder)
    return ids


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
        return self._ids[run_id]

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

    def forget(self, run_id: str):
        """Close a run so it is opened afresh next time (after its files were replaced)."""
        with self._lock:
            run = self._open.pop(run_id, None)
        if run is not None:
            run.close()
