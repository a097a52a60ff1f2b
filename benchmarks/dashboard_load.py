"""Time from request to the first figure of the overview and of the Ranks page, for synthetic runs of growing
length and rank count.

Writes synthetic runs (by default 1000 recorded steps x 8, 64, 256 and 1024 ranks x 20 layers; the 1024-rank run
is about 3 GB), starts the real `tview dashboard` on them and drives headless Chromium: each figure is the median
over --repeat page loads of the time from `page.goto` to the page's first figure being drawn (overview: the run
card and the loss figure; Ranks page: the statistic across ranks). Also times the server-side work of each page
alone (opening the run, summaries, diagnosis, reads across ranks) in this process. The first load of each
run reads it; later loads are served from the server's memo while the run is unchanged: both are reported.

    python benchmarks/dashboard_load.py [--sizes 1e3] [--ranks 8,64,256,1024] [--layers 20] [--repeat 3]
    python benchmarks/dashboard_load.py --sizes 1e3,1e4,1e5,1e6 --ranks 8      # the length axis
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

from app.pages import overview, ranks  # noqa: E402
from app.testing import CHROMIUM, CHROMIUM_FLAGS, start_dashboard  # noqa: E402
from tview.demo import free_port  # noqa: E402
from tview.render import summaries  # noqa: E402
from tview.store.reader import open_run  # noqa: E402
from tview.store.synthetic import write_synthetic_run  # noqa: E402

OVERVIEW_JS = """() => {
  const card = document.querySelector('.run-card');
  const el = document.querySelector('#overview-loss .js-plotly-plot');
  return !!(card && /[1-9][0-9]* recorded steps/.test(card.innerText) && el && el.data && el.data.length &&
            el.querySelector('.scatterlayer .trace'));
}"""
RANKS_JS = """() => {
  const el = document.querySelector('#ranks-stat-graph .js-plotly-plot');
  return !!(el && el.data && el.data.length && el.querySelector('.scatterlayer .trace'));
}"""
PAGES = (("overview", "/", OVERVIEW_JS), ("ranks", "/ranks", RANKS_JS))


def server_overview(path: str) -> float:
    """Seconds to open the run and compute everything the overview shows."""
    t = time.perf_counter()
    run = open_run(path, skip_bad_shards=True)
    overview.run_card("run", overview.card_data(run), None)
    run.close()
    return time.perf_counter() - t


def server_ranks(path: str) -> float:
    """Seconds to open the run and compute the Ranks page's summary (table, standouts) and first figure."""
    t = time.perf_counter()
    run = open_run(path, skip_bad_shards=True)
    ranks.summary(run)
    summaries.stat_across_ranks(run, "local_grad_norm", None, ranks.POINTS)
    run.close()
    return time.perf_counter() - t


def write_runs(root: str, sizes: list[int], rank_counts: list[int], layers: int) -> list[tuple[int, int, str]]:
    runs = []
    for n in sizes:
        for r in rank_counts:
            run_id = f"steps-{n}-ranks-{r}"
            path = os.path.join(root, run_id)
            if not os.path.exists(os.path.join(path, "run.tview")):
                t = time.perf_counter()
                write_synthetic_run(path, n, ranks=r, layers=layers, channel_tail=100)
                size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
                print(f"wrote {n} steps x {r} ranks x {layers} layers in {time.perf_counter() - t:.1f} s "
                      f"({size / 2**30:.2f} GiB)", flush=True)
            runs.append((n, r, run_id))
    return runs


def page_times(page, base: str, run_id: str, repeat: int) -> dict[str, float]:
    """Seconds from goto to the first figure, per page: the first load of the run since the server started
    (nothing read yet) and the median of the loads after it (reads served from the server's memo while the
    run is unchanged)."""
    out = {}
    for name, path, drawn in PAGES:
        times = []
        for _ in range(repeat + 1):
            page.goto("about:blank")
            t = time.perf_counter()
            page.goto(f"{base}{path}?runs={run_id}")
            page.wait_for_function(drawn, timeout=300_000, polling=20)
            times.append(time.perf_counter() - t)
        out[f"page_{name}"] = times[0]
        out[f"again_{name}"] = statistics.median(times[1:])
    return out


def measure(root: str, runs: list, repeat: int, chromium: str) -> list[dict]:
    port = free_port()
    server = start_dashboard(root, port, os.path.join(root, "dashboard.log"), env=dict(os.environ, PYTHONPATH=REPO))
    base = f"http://127.0.0.1:{port}"
    from playwright.sync_api import sync_playwright
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/?runs={runs[0][2]}")  # warm up: scripts cached, as for any user
            page.wait_for_function(OVERVIEW_JS, timeout=300_000)
            for n, r, run_id in runs:
                path = os.path.join(root, run_id)
                row = {"steps": n, "ranks": r,
                       "server_overview": statistics.median(server_overview(path) for _ in range(repeat)),
                       "server_ranks": statistics.median(server_ranks(path) for _ in range(repeat))}
                row.update(page_times(page, base, run_id, repeat))
                rows.append(row)
                print(f"{n:>9} steps x {r:>5} ranks: server overview {row['server_overview']:.3f} s, ranks "
                      f"{row['server_ranks']:.3f} s; first figure: overview {row['page_overview']:.3f} s "
                      f"(again {row['again_overview']:.3f} s), Ranks page {row['page_ranks']:.3f} s "
                      f"(again {row['again_ranks']:.3f} s)", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    return rows


def report(rows: list[dict], layers: int) -> None:
    base = rows[0]
    print("\n| recorded steps | ranks x layers | server: overview | server: Ranks page | first figure: overview "
          "(first load, again) | first figure: Ranks page (first load, again) | first load vs first row |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['steps']:,} | {row['ranks']} x {layers} | {row['server_overview'] * 1e3:.0f} ms | "
              f"{row['server_ranks'] * 1e3:.0f} ms | {row['page_overview'] * 1e3:.0f} ms, "
              f"{row['again_overview'] * 1e3:.0f} ms | {row['page_ranks'] * 1e3:.0f} ms, "
              f"{row['again_ranks'] * 1e3:.0f} ms | "
              f"{row['page_overview'] / base['page_overview']:.2f}x, {row['page_ranks'] / base['page_ranks']:.2f}x |")
    worst = max(max(r["page_overview"], r["page_ranks"]) for r in rows)
    spread = max(max(r["page_overview"] / base["page_overview"], r["page_ranks"] / base["page_ranks"]) for r in rows)
    print(f"\ntarget: first figure under 2 s, within 2x of the first row: worst first load {worst:.3f} s "
          f"({'met' if worst < 2.0 else 'MISSED'}), largest ratio {spread:.2f}x ({'met' if spread <= 2 else 'MISSED'})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e3", help="recorded steps per run, comma-separated")
    ap.add_argument("--ranks", default="8,64,256,1024", help="ranks per run, comma-separated")
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="folder for the synthetic runs (default: a temporary one, removed)")
    ap.add_argument("--chromium", default=CHROMIUM)
    a = ap.parse_args(argv)
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    rank_counts = [int(r) for r in a.ranks.split(",")]
    root = a.out or tempfile.mkdtemp(prefix="tview-dashboard-load-")
    os.makedirs(root, exist_ok=True)
    try:
        runs = write_runs(root, sizes, rank_counts, a.layers)
        report(measure(root, runs, a.repeat, a.chromium), a.layers)
    finally:
        if a.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
