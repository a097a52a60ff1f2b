"""Fixtures for the dashboard: demo runs (one healthy, one with a damaged shard, one with no steps),
the real `tview dashboard` server on a free port, and headless Debian Chromium through Playwright."""

import os

import pytest

from tests.conftest import python_env
from tview.demo import free_port
from tview_app.testing import start_dashboard


@pytest.fixture(scope="session")
def server(runs_root):
    port = free_port()
    proc = start_dashboard(runs_root, port, os.path.join(str(runs_root), f"dashboard-{port}.log"), env=python_env())
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.js_errors = errors
    yield pg
    ctx.close()


def hollow_run(path: str, ranks: int = 72) -> str:
    """A synthetic run of `ranks` ranks (beyond 64 a run opens its shards on first use) whose shards 1.. were
    overwritten with zeros past their first 512 bytes (the HDF5 superblock stays), size and modification time
    kept: their summaries (stamped with both) stay valid, any read of their tables fails."""
    from tview.store.synthetic import write_synthetic_run
    path = write_synthetic_run(path, 60, ranks=ranks, layers=3, detail_every=50, channel_tail=10)
    for rank in range(1, ranks):
        shard = os.path.join(path, f"rank-{rank:05d}.h5")
        st = os.stat(shard)
        with open(shard, "r+b") as f:
            f.seek(512)
            f.write(b"\0" * (st.st_size - 512))
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    return path
