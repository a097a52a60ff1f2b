"""Screenshots of every dashboard page on one run, as a new user sees them (1400 x 1000 window, whole page):
`python -m tview_app.screenshots RUNS_FOLDER RUN_ID OUT_DIR` writes OUT_DIR/dashboard-<page>.png."""

from __future__ import annotations

import argparse
import os
import tempfile

from .testing import CHROMIUM, CHROMIUM_FLAGS, start_dashboard

PAGES = {"overview": "/", "scalars": "/scalars", "layers": "/layers", "ranks": "/ranks", "filters": "/filters",
         "3d": "/3d"}
DRAWN_JS = """() => { const plots = [...document.querySelectorAll('.js-plotly-plot')];  // drawn: traces or a message
  return plots.length > 0 && plots.every(p => (p.data && p.data.length > 0)
                                              || (p.layout && (p.layout.annotations || []).length > 0))
         && !document.querySelector('[data-dash-is-loading="true"]')
         && !document.body.innerText.includes('diagnosing ...'); }"""


def shoot(base_url: str, run_id: str, out_dir: str, pages=PAGES, settle_ms: int = 2500, browser=None) -> list[str]:
    """Open each page of `run_id` in headless Chromium (a Playwright browser given, or one started here), wait
    until every graph drew, save a whole-page PNG."""
    if browser is None:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            started = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            try:
                return shoot(base_url, run_id, out_dir, pages, settle_ms, started)
            finally:
                started.close()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page, written = context.new_page(), []
    for name, path in pages.items():
        page.goto(f"{base_url}{path}?runs={run_id}")
        page.wait_for_function(DRAWN_JS, timeout=120_000)
        page.wait_for_timeout(settle_ms)  # the figures read from every shard follow the first ones
        page.mouse.move(1, 1)  # no hover label or toolbar on the picture
        written.append(os.path.join(out_dir, f"dashboard-{name}.png"))
        page.screenshot(path=written[-1], full_page=True)
    context.close()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs"), ap.add_argument("run"), ap.add_argument("out")
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args()
    proc = start_dashboard(a.runs, a.port, os.path.join(tempfile.gettempdir(), f"tview-screenshots-{a.port}.log"))
    try:
        for path in shoot(f"http://127.0.0.1:{a.port}", a.run, a.out):
            print(path)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
