"""Time from request to the first figure of the overview and of the Ranks page, for synthetic runs of growing
length and rank count.

Writes synthetic runs (by default 1000 recorded steps x 8, 64, 256 and 1024 ranks x 20 layers; the 1024-rank run
is about 2.5 GB; --out keeps them for the next time), starts the real `tview dashboard` on them and drives headless
Chromium, timing from `page.goto` to the page's first figure drawn (overview: the run card and the loss figure;
Ranks page: the statistic across ranks, from the rank summaries). "cold": the first load after the server started
(a server is started afresh for each run and page; the browser keeps the app's scripts cached, as a user's does);
"warm": the median of --repeat loads after it (reads served from the server's memo while the run is unchanged).
Also: on the cold overview, when the diagnosis panel came; on the cold Ranks page, when the statistic read from
every shard replaced the summaries' figure; and the server-side work alone in this process (open the run and
compute the overview's card, the Ranks page's table and first figure, the diagnosis).

    python benchmarks/dashboard_load.py [--sizes 1e3] [--ranks 8,64,256,1024] [--layers 20] [--repeat 3]
    python benchmarks/dashboard_load.py --sizes 1e3,1e4,1e5,1e6 --ranks 8      # the length axis
"""

from __future__ import annotations

import argparse
import contextlib
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
from tview.diagnose import diagnose  # noqa: E402
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
RANKS_FULL_JS = """() => {
  const el = document.querySelector('#ranks-stat-graph .js-plotly-plot');
  return !!(el && el.layout && el.layout.meta && el.layout.meta.source === 'shards' &&
            el.querySelector('.scatterlayer .trace'));
}"""
DIAGNOSIS_JS = "() => !!document.querySelector('.diagnosis-card .tv-diagnosis')"
PAGES = (("overview", "/", OVERVIEW_JS, DIAGNOSIS_JS), ("ranks", "/ranks", RANKS_JS, RANKS_FULL_JS))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def server_times(path: str) -> dict[str, float]:
    """Seconds, in this process, to open the run and compute: the overview's card and loss figure; the Ranks page's
    table and first figure (from the rank summaries); the diagnosis."""
    def card():
        with open_run(path, skip_bad_shards=True) as run:
            overview.run_card("run", overview.card_data(run), None)

    def ranks_page():
        with open_run(path, skip_bad_shards=True) as run:
            s = summaries.compact(run.rank_summaries())
            ranks.summary(run, s)
            ranks.trend_values(run, s, "local_grad_norm")

    def diagnosis():
        with open_run(path, skip_bad_shards=True) as run:
            diagnose(run, None)  # every step, as the overview diagnoses a closed run
    return {"server_overview": _timed(card), "server_ranks": _timed(ranks_page), "server_diagnosis": _timed(diagnosis)}


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


def load(page, url: str, drawn: str, then: str) -> tuple[float, float]:
    """Seconds from goto to `drawn` (a JS predicate) holding, and to `then` holding; returns once the page's
    requests settled (a load never overlaps the one before it on the server)."""
    page.goto("about:blank")
    t = time.perf_counter()
    page.goto(url)
    page.wait_for_function(drawn, timeout=300_000, polling=20)
    first = time.perf_counter() - t
    page.wait_for_function(then, timeout=300_000, polling=50)
    later = time.perf_counter() - t
    page.wait_for_load_state("networkidle", timeout=300_000)
    return first, later


@contextlib.contextmanager
def dashboard(root: str, port: int):
    """A `tview dashboard` started afresh on root (nothing read yet), stopped on leaving."""
    server = start_dashboard(root, port, os.path.join(root, "dashboard.log"), env=dict(os.environ, PYTHONPATH=REPO))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def page_times(page, root: str, port: int, run_id: str, repeat: int) -> dict[str, float]:
    """Per page: seconds from goto to the first figure on a server just started (cold), to what comes after it
    (the diagnosis; the statistic from every shard), and the median of `repeat` loads after those (warm)."""
    out = {}
    for name, path, drawn, then in PAGES:
        with dashboard(root, port) as base:
            url = f"{base}{path}?runs={run_id}"
            out[f"page_{name}"], out[f"then_{name}"] = load(page, url, drawn, then)
            out[f"again_{name}"] = statistics.median(load(page, url, drawn, then)[0] for _ in range(repeat))
    return out


def measure(root: str, runs: list, repeat: int, chromium: str) -> list[dict]:
    port = free_port()
    from playwright.sync_api import sync_playwright
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        with dashboard(root, port) as base:  # warm up: the app's scripts cached, as for any user
            load(page, f"{base}/?runs={runs[0][2]}", OVERVIEW_JS, DIAGNOSIS_JS)
        for n, r, run_id in runs:
            row = {"steps": n, "ranks": r, **server_times(os.path.join(root, run_id))}
            row.update(page_times(page, root, port, run_id, repeat))
            rows.append(row)
            print(f"{n:>9} steps x {r:>5} ranks: server: card {row['server_overview']:.3f} s, Ranks page "
                  f"{row['server_ranks']:.3f} s, diagnosis {row['server_diagnosis']:.3f} s; first figure: overview "
                  f"{row['page_overview']:.3f} s (diagnosis at {row['then_overview']:.3f} s; warm "
                  f"{row['again_overview']:.3f} s), Ranks page {row['page_ranks']:.3f} s (from every shard at "
                  f"{row['then_ranks']:.3f} s; warm {row['again_ranks']:.3f} s)", flush=True)
        browser.close()
    return rows


def report(rows: list[dict], layers: int) -> None:
    base = rows[0]
    print("\n| recorded steps | ranks x layers | first figure: overview (cold, warm) | first figure: Ranks page (cold, "
          "warm) | cold vs first row | diagnosis shown (cold) | Ranks page from every shard (cold) | server: card, "
          "Ranks page, diagnosis |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['steps']:,} | {row['ranks']} x {layers} | {row['page_overview']:.2f} s, "
              f"{row['again_overview']:.2f} s | {row['page_ranks']:.2f} s, {row['again_ranks']:.2f} s | "
              f"{row['page_overview'] / base['page_overview']:.2f}x, {row['page_ranks'] / base['page_ranks']:.2f}x | "
              f"{row['then_overview']:.2f} s | {row['then_ranks']:.2f} s | {row['server_overview'] * 1e3:.0f} ms, "
              f"{row['server_ranks'] * 1e3:.0f} ms, {row['server_diagnosis']:.2f} s |")
    worst = max(max(r["page_overview"], r["page_ranks"]) for r in rows)
    last = rows[-1]
    ratio = max(last["page_overview"] / base["page_overview"], last["page_ranks"] / base["page_ranks"])
    spread = max(max(r["page_overview"] / base["page_overview"], r["page_ranks"] / base["page_ranks"]) for r in rows)
    print(f"\ntarget: first figure under 2 s (cold), within 2x of the first row: worst cold load {worst:.3f} s "
          f"({'met' if worst < 2.0 else 'MISSED'}); last row / first row {ratio:.2f}x, largest ratio {spread:.2f}x "
          f"({'met' if spread <= 2 else 'MISSED'})")


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
