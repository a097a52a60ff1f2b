"""Fixtures for the dashboard: demo runs (one healthy, one with a damaged shard, one with no steps),
the real `tview dashboard` server on a free port, and headless Debian Chromium through Playwright."""

import os
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import PY, python_env

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root, port):
    log = open(os.path.join(str(root), f"dashboard-{port}.log"), "w")
    proc = subprocess.Popen([PY, "-m", "tview.cli", "dashboard", str(root), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=python_env())
    proc.log_path = log.name
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"dashboard exited: {open(proc.log_path).read()}")
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("dashboard did not start in 60 s")


@pytest.fixture(scope="session")
def server(runs_root):
    port = free_port()
    proc = start_server(runs_root, port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.js_errors = errors
    yield pg
    ctx.close()
