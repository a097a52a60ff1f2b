"""Fixtures for the dashboard: demo runs (one healthy, one with a damaged shard, one with no steps),
the real `tview dashboard` server on a free port, and headless Debian Chromium through Playwright."""

import os

import pytest

from tests.conftest import python_env
from tview.demo import free_port
from tview_app.testing import CHROMIUM, CHROMIUM_FLAGS, start_dashboard


@pytest.fixture(scope="session")
def server(runs_root):
    port = free_port()
    proc = start_dashboard(runs_root, port, os.path.join(str(runs_root), f"dashboard-{port}.log"), env=python_env())
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
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
