"""Time from request to a fully drawn overview page, for synthetic runs of growing length.

Writes synthetic runs (1e3 ... 1e6 recorded steps x 8 ranks x 20 layers by default), starts the real
`tview dashboard` on them and drives headless Chromium: each figure is the median over --repeat page
loads of the time from `page.goto` to the overview card and loss figure being drawn. Also times the
server-side work alone (opening the run, summary, health checks, loss per rank) in this process.

    python benchmarks/dashboard_load.py [--sizes 1e3,1e4,1e5,1e6] [--ranks 8] [--layers 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from app.pages.overview import POINTS  # noqa: E402
from app.testing import CHROMIUM, CHROMIUM_FLAGS, start_dashboard  # noqa: E402
from tview.demo import free_port  # noqa: E402
from tview.render import summaries  # noqa: E402
from tview.store.reader import open_run  # noqa: E402
from tview.store.synthetic import write_synthetic_run  # noqa: E402

DRAWN_JS = """() => {
  const card = document.querySelector('.run-card');
  const el = document.querySelector('#overview-loss .js-plotly-plot');
  // the card with its step count, and every rank's loss line drawn
  return !!(card && /[1-9][0-9]* recorded steps/.test(card.innerText) && el && el.data &&
            el.data.length === RANKS && el.querySelector('.gl-container, .scatterlayer'));
}"""


def server_side(path: str) -> float:
    """Seconds to open the run and compute everything the overview shows."""
    t = time.perf_counter()
    run = open_run(path, skip_bad_shards=True)
    loss = summaries.scalar_per_rank(run, "loss", POINTS)  # as the overview page does
    rows = summaries.rank_rows(run)
    summaries.run_summary(run, rows)
    summaries.health_findings(run, POINTS, loss=loss, rows=rows)
    run.close()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e3,1e4,1e5,1e6")
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="folder for the synthetic runs (default: a temporary one, removed)")
    ap.add_argument("--chromium", default=CHROMIUM)
    a = ap.parse_args(argv)
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    root = a.out or tempfile.mkdtemp(prefix="tview-dashboard-load-")
    os.makedirs(root, exist_ok=True)
    try:
        for n in sizes:
            path = os.path.join(root, f"steps-{n}")
            if not os.path.exists(os.path.join(path, "run.tview")):
                t = time.perf_counter()
                write_synthetic_run(path, n, ranks=a.ranks, layers=a.layers)
                size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
                print(f"wrote {n} steps x {a.ranks} ranks x {a.layers} layers in {time.perf_counter() - t:.1f} s "
                      f"({size / 2**30:.2f} GiB)", flush=True)
        port = free_port()
        server = start_dashboard(root, port, os.path.join(root, "dashboard.log"), env=dict(os.environ, PYTHONPATH=REPO))
        base = f"http://127.0.0.1:{port}"
        from playwright.sync_api import sync_playwright
        rows = []
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=a.chromium, headless=True, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{base}/?runs=steps-{sizes[0]}")  # warm up: scripts cached, as for any user
                page.wait_for_function(DRAWN_JS.replace("RANKS", str(a.ranks)), timeout=120_000)
                for n in sizes:
                    run_id = f"steps-{n}"
                    server_times = [server_side(os.path.join(root, run_id)) for _ in range(a.repeat)]
                    times = []
                    drawn = DRAWN_JS.replace("RANKS", str(a.ranks))
                    for _ in range(a.repeat):
                        page.goto("about:blank")
                        t = time.perf_counter()
                        page.goto(f"{base}/?runs={run_id}")
                        page.wait_for_function(drawn, timeout=120_000, polling=20)
                        times.append(time.perf_counter() - t)
                    rows.append((n, statistics.median(server_times), statistics.median(times)))
                    print(f"{n:>9} steps: server {rows[-1][1]:.3f} s, page drawn {rows[-1][2]:.3f} s", flush=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
        base_page = rows[0][2]
        print(f"\n| recorded steps | ranks x layers | server-side overview | request to drawn overview | vs {sizes[0]} steps |")
        print("|---|---|---|---|---|")
        for n, s, pg in rows:
            print(f"| {n:,} | {a.ranks} x {a.layers} | {s * 1e3:.0f} ms | {pg * 1e3:.0f} ms | {pg / base_page:.2f}x |")
        worst = max(r[2] for r in rows)
        print(f"\ntarget: under 1 s and nearly flat: worst {worst:.3f} s "
              f"({'met' if worst < 1.0 else 'MISSED'}), largest/smallest {rows[-1][2] / base_page:.2f}x")
    finally:
        if a.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
