"""A live run at scale: N synthetic writer processes (64 by default) append to their shards while `tview dashboard`
follows the run in headless Chromium; reports the server's memory, how fast the overview and the Ranks page
draw their first figure while the run grows, and whether new steps appear.

Each writer is a real process with its own SWMR shard (tview.store.shard.ShardWriter), writing one step every
1/--rate seconds (scalars and per-layer gradient, weight and activation statistics) in batches flushed about
once a second, as the recorder's background writer does. Rank N-1 is slowed (its step time is 2x).

    python benchmarks/live_scale.py [--ranks 64] [--seconds 90] [--rate 4] [--layers 10] [--every 15]

Issue 21's memory check: --seconds 660 --every 10 (flat within 10% after the first minute, printed last).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from app.testing import CHROMIUM, CHROMIUM_FLAGS, start_dashboard  # noqa: E402
from benchmarks.dashboard_load import OVERVIEW_JS, RANKS_JS  # noqa: E402
from tview.demo import free_port  # noqa: E402

LIVE_TABLES = ("grad", "local_grad", "weight", "act", "act_counts")  # per-layer tables of the synthetic run


def _record(step: int, rank: int, layers: int, specs, rng, step_time: float):
    from tview.store.records import StepRecord, TableRow
    measured = np.ones(layers, np.uint8)
    tables = {spec.name: TableRow(measured, {c.name: (np.zeros(layers) if c.nonfinite else
                                                      np.abs(1 + k + 0.05 * rng.normal(size=layers)))
                                             for k, c in enumerate(spec.columns)}) for spec in specs}
    loss = 2.3 * np.exp(-step / 300) + 0.05 * rng.normal()
    return StepRecord(step, time.time(), {"loss": loss, "step_time": step_time, "examples": 64.0}, tables)


def writer(path: str, rank: int, ranks: int, layers: int, rate: float, seconds: float) -> None:
    """One rank: append a step every 1/rate seconds (rank ranks-1 at half the rate) for `seconds`, then close."""
    from tview.store import schema
    from tview.store.records import ShardLayout
    from tview.store.shard import ShardWriter
    from tview.store.synthetic import TABLES, synthetic_layers
    specs = [t for t in TABLES if t.name in LIVE_TABLES]
    layout = ShardLayout(rank=rank, world_size=ranks, run_id="live-scale", layers=synthetic_layers(layers),
                         tables=specs)
    w = ShardWriter(os.path.join(path, schema.shard_name(rank)), layout)
    rng = np.random.default_rng(rank)
    period = (2.0 if rank == ranks - 1 else 1.0) / rate
    batch, last_flush, step, end = [], time.time(), 0, time.time() + seconds
    while time.time() < end:
        batch.append(_record(step, rank, layers, specs, rng, period))
        step += 1
        if time.time() - last_flush >= 1.0:
            w.write(batch)
            w.flush()
            batch, last_flush = [], time.time()
        time.sleep(period)
    if batch:
        w.write(batch)
    w.close(clean=True)


def start_writers(path: str, a) -> list[mp.Process]:
    from tview.store.manifest import write_manifest
    from tview.store.synthetic import synthetic_layers
    os.makedirs(path, exist_ok=True)
    write_manifest(path, {"model": "Synthetic (live)", "world_size": a.ranks, "layers": synthetic_layers(a.layers),
                          "preset": "default", "schedule": "every(1)", "snapshot_schedule": "never",
                          "filter_layers": [], "probe_layers": [], "run_id": "live-scale"})
    procs = [mp.Process(target=writer, args=(path, r, a.ranks, a.layers, a.rate, a.seconds + 30), daemon=True)
             for r in range(a.ranks)]
    for p in procs:
        p.start()
    return procs


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def children_rss_mib(pid: int) -> float:
    """The memory of the server's child processes now (a live run's diagnosis, while one runs)."""
    total = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(rss_mib(int(c)) for c in f.read().split())
        except (OSError, AttributeError):  # a child that just exited
            pass
    return total


def first_figure(page, url: str, drawn: str) -> float:
    page.goto("about:blank")
    t = time.perf_counter()
    page.goto(url)
    page.wait_for_function(drawn, timeout=120_000, polling=50)
    return time.perf_counter() - t


def shown_steps(page) -> int:
    m = re.search(r"(\d+) recorded steps", page.locator(".run-card").first.inner_text())
    return int(m.group(1)) if m else -1


def follow(root: str, server_pid: int, base: str, a) -> list[dict]:
    """Every --every seconds: server memory, first figure of the overview and of the Ranks page, steps shown."""
    from playwright.sync_api import sync_playwright
    samples = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        follower = browser.new_page(viewport={"width": 1400, "height": 1000})  # left open: the live overview
        follower.goto(f"{base}/?runs=live")
        t0 = time.time()
        while time.time() - t0 < a.seconds:
            overview = first_figure(page, f"{base}/?runs=live", OVERVIEW_JS)
            steps = shown_steps(page)
            ranks = first_figure(page, f"{base}/ranks?runs=live", RANKS_JS)
            follower.wait_for_timeout(10)
            live_steps = shown_steps(follower) if follower.locator(".run-card").count() else -1
            samples.append({"t": time.time() - t0, "rss": rss_mib(server_pid),
                            "child": children_rss_mib(server_pid), "overview": overview, "ranks": ranks,
                            "steps": steps, "follower_steps": live_steps})
            s = samples[-1]
            print(f"t={s['t']:5.0f} s  server RSS {s['rss']:6.0f} MiB (its children {s['child']:4.0f})  "
                  f"first figure: overview {overview:.2f} s, Ranks page {ranks:.2f} s  steps shown {steps} "
                  f"(open overview: {live_steps})", flush=True)
            time.sleep(max(0.0, a.every - (time.time() - t0 - s["t"])))
        browser.close()
    return samples


def report(samples: list[dict], a) -> None:
    print("\n| t (s) | server RSS (MiB) | its children (MiB) | overview first figure (s) | Ranks page first figure (s) "
          "| steps shown |")
    print("|---|---|---|---|---|---|")
    for s in samples:
        print(f"| {s['t']:.0f} | {s['rss']:.0f} | {s['child']:.0f} | {s['overview']:.2f} | {s['ranks']:.2f} "
              f"| {s['steps']} |")
    grew = samples[-1]["steps"] > samples[0]["steps"]
    followed = samples[-1]["follower_steps"] > samples[0]["follower_steps"]
    rss = [s["rss"] for s in samples]
    print(f"\n{a.ranks} writers for {a.seconds:.0f} s: server RSS {rss[0]:.0f} -> {rss[-1]:.0f} MiB "
          f"(max {max(rss):.0f}); "
          f"first figure, worst: overview {max(s['overview'] for s in samples):.2f} s, Ranks page "
          f"{max(s['ranks'] for s in samples):.2f} s; new steps appeared: {'yes' if grew else 'NO'} on reload, "
          f"{'yes' if followed else 'NO'} on the open overview")
    later = [s["rss"] for s in samples if s["t"] >= 60] or rss
    print(f"After the first minute ({len(later)} samples): server RSS {later[0]:.0f} -> {later[-1]:.0f} MiB, "
          f"min {min(later):.0f}, max {max(later):.0f}: max / min {max(later) / min(later):.3f} "
          f"({'flat within 10%' if max(later) <= 1.1 * min(later) else 'NOT flat within 10%'}); its children "
          f"(the live diagnosis while one runs): max {max(s['child'] for s in samples):.0f} MiB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=90.0, help="how long the dashboard follows the run")
    ap.add_argument("--rate", type=float, default=4.0, help="steps per second per writer")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    ap.add_argument("--out", default=None, help="folder for the run (default: a temporary one, removed)")
    a = ap.parse_args(argv)
    root = a.out or tempfile.mkdtemp(prefix="tview-live-scale-")
    procs, server = [], None
    try:
        procs = start_writers(os.path.join(root, "live"), a)
        while sum(f.startswith("rank-") for f in os.listdir(os.path.join(root, "live"))) < a.ranks:
            time.sleep(0.5)
        port = free_port()
        server = start_dashboard(root, port, os.path.join(root, "dashboard.log"), env=dict(os.environ, PYTHONPATH=REPO))
        report(follow(root, server.pid, f"http://127.0.0.1:{port}", a), a)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        if a.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
