"""Driving the dashboard from tests and benchmarks: `tview dashboard` started in its own process and
waited for, and the flags Debian's headless Chromium needs on a machine with no network."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run"]


def start_dashboard(root: str, port: int, log_path: str, env: dict | None = None,
                    timeout: float = 60) -> subprocess.Popen:
    """Start `tview dashboard root --port port` (output to log_path) and return once it answers;
    raise with its log if it exits or does not answer within `timeout` seconds."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "tview.cli", "dashboard", str(root), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"dashboard exited: {open(log_path).read()}") from None
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"dashboard did not answer within {timeout:.0f} s: {open(log_path).read()}")
