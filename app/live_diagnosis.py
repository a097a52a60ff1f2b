"""The diagnosis of a live run, made by `tview diagnose --json` in a short-lived child process: the command line's
findings while the run grows, and none of its reads in the dashboard server, whose memory stays flat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields

import tview
from tview.diagnose.findings import Finding
from tview.errors import TviewError

LIVE_EVERY = 10.0  # seconds: a live run is diagnosed again at most this often (and no sooner than its last took)
CHILD_TIMEOUT = 600.0  # seconds a child may take before it is killed and the panel says so
CHILD_NICE = 10  # the child yields the processor to the server's requests and to training
FINDING_FIELDS = {f.name for f in fields(Finding)}


def finding_from_dict(d: dict) -> Finding:
    """The Finding that Finding.to_dict (`tview diagnose --json`) wrote, followed_by included."""
    kept = {k: v for k, v in d.items() if k in FINDING_FIELDS}
    kept["followed_by"] = [finding_from_dict(f) for f in d.get("followed_by") or []]
    return Finding(**kept)


def child_command(folder: str) -> list[str]:
    """`tview diagnose --json folder`, run by this Python (the same tview as the server)."""
    return [sys.executable, "-m", "tview.cli", "diagnose", "--json", folder]


def child_env() -> dict[str, str]:
    """The server's environment with the folder that holds the server's tview package first on PYTHONPATH."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(tview.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def findings_in_child(folder: str, timeout: float = CHILD_TIMEOUT) -> list[Finding]:
    """The findings of the run at `folder` as `tview diagnose` gives them, read in a child process that exits
    when done (what it read goes back to the operating system). A child that fails raises TviewError with why."""
    child = subprocess.Popen(child_command(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=child_env(), text=True)
    try:
        os.setpriority(os.PRIO_PROCESS, child.pid, CHILD_NICE)
    except (OSError, AttributeError):  # already gone, not allowed, or no such call here: the server's priority
        pass
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise TviewError(f"{folder}: diagnosis took over {timeout:.0f} s; stopped") from None
    if child.returncode != 0:
        lines = err.strip().splitlines()
        raise TviewError(lines[-1] if lines else f"tview diagnose exited with status {child.returncode}")
    return [finding_from_dict(d) for d in json.loads(out)]


def files_stamp(folder: str) -> tuple:
    """(name, size, modification time) of each file in the run folder: any write to a shard or summary changes it."""
    stamp = []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.is_file():
                st = e.stat()
                stamp.append((e.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(stamp))


@dataclass
class LiveFindings:
    """A live run's findings as of `at` (time.time()), read from the files as `stamp` saw them in `seconds`."""

    findings: list[Finding]
    stamp: tuple
    at: float
    seconds: float


def due(last: LiveFindings | None, stamp: tuple, now: float, every: float = LIVE_EVERY) -> bool:
    """Whether to diagnose again: never yet, or the files changed since and the wait is over (`every` seconds, or
    as long as the last diagnosis took when longer: a child is at work at most half the time)."""
    if last is None:
        return True
    return stamp != last.stamp and now - last.at >= max(every, last.seconds)


class LiveDiagnoses:
    """The last findings of each live run (by folder), made again in a child when due(); between, the last ones."""

    def __init__(self, every: float = LIVE_EVERY, timeout: float = CHILD_TIMEOUT):
        self.every, self.timeout = every, timeout
        self._lock = threading.Lock()
        self._last: dict[str, LiveFindings] = {}

    def findings(self, folder: str) -> LiveFindings:
        """The run's findings, diagnosed again in a child process when due (the callers take turns per run: the
        catalog computes one diagnosis per run at a time)."""
        stamp = files_stamp(folder)
        with self._lock:
            last = self._last.get(folder)
        if not due(last, stamp, time.time(), self.every):
            return last
        started = time.time()
        found = findings_in_child(folder, self.timeout)
        fresh = LiveFindings(found, stamp, time.time(), time.time() - started)
        with self._lock:
            self._last[folder] = fresh
        return fresh

    def forget(self, folder: str) -> None:
        """Drop a run's last findings (it is no longer live: it is diagnosed in full, once)."""
        with self._lock:
            self._last.pop(folder, None)
