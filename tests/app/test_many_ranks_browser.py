"""The dashboard on a 64-rank run, in headless Chromium: quantile bands with the slowest rank named, the rank x step
heatmap, the ranks table worst first and paged, and one focused rank followed by every page."""

import re

import pytest

from tests.app.conftest import hollow_run
from tests.app.test_dashboard_browser import TRACES_JS, traces

pytestmark = pytest.mark.slow
RANKS = 64


@pytest.fixture(scope="session")
def wide(runs_root):
    """A closed synthetic run of 64 ranks x 300 steps beside the demo runs (rank r's step time grows with r)."""
    from tview.store.synthetic import write_synthetic_run
    write_synthetic_run(str(runs_root / "wide"), 300, ranks=RANKS, layers=6, detail_every=50, channel_tail=20)
    return "wide"


def wait_named(page, graph_id: str, name: str, timeout: float = 20_000):
    """Wait until the graph has a trace called `name`."""
    try:
        page.wait_for_function(f"() => {{ const r = ({TRACES_JS})('{graph_id}');"
                               f" return r && r.names.includes('{name}'); }}", timeout=timeout)
    except Exception as exc:
        state = page.evaluate(TRACES_JS, graph_id)
        raise AssertionError(f"{page.url}: {graph_id} has no line {name!r}: {state}") from exc


def focus_value(page) -> str:
    return page.locator("#focus-input").input_value()


def click_heatmap_until_focused(page, tries: int = 3):
    """Click a row in the lower half of the rank x step heatmap until the click focuses a rank: a click that lands
    while Plotly redraws the figure (a refresh of the page's poll under load) is lost, as a person's would be, who
    clicks again. Raises where no click in `tries` focused a rank."""
    for attempt in range(tries):
        box = page.locator("#ranks-heatmap .nsewdrag").first.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.6)
        try:
            page.wait_for_function("() => document.querySelector('#focus-input').value !== ''", timeout=10_000)
            return
        except Exception:
            if attempt == tries - 1:
                raise


def test_bands_heatmap_and_the_ranks_table_at_64_ranks(server, page, wide):
    page.goto(f"{server}/ranks?runs={wide}")
    bands = traces(page, "ranks-stat-graph")
    assert {"min-max of ranks", "5%-95% of ranks", "median rank"} <= set(bands["names"]), bands["names"]
    assert "rank 63 (slowest)" in bands["names"] and len(bands["points"]) < 12  # not one line per rank
    heat = traces(page, "ranks-heatmap")
    assert heat["points"] == [RANKS]  # one row per rank
    step = traces(page, "ranks-step-time")
    assert "rank 63 (slowest)" in step["names"]
    label = page.locator("#ranks-page-label")  # filled after the figures, by callbacks of its own: wait for it
    page.wait_for_function("() => { const l = document.querySelector('#ranks-page-label');"
                           " return l && l.innerText.includes('page 1 of 4'); }", timeout=20_000)
    assert label.inner_text().strip() == "page 1 of 4 (64 ranks)"
    first = page.locator(".ranks-table tr").nth(1)
    assert first.locator("button").inner_text() == "63" and "slowest" in first.inner_text()  # worst first
    page.locator("#ranks-next").click()
    page.wait_for_function("() => document.querySelector('#ranks-page-label').innerText.includes('page 2 of 4')")
    assert page.locator(".ranks-table tr").count() == 17  # head + 16 ranks
    assert page.js_errors == []


def test_a_rank_picked_anywhere_is_focused_on_every_page(server, page, wide):
    page.goto(f"{server}/ranks?runs={wide}")
    traces(page, "ranks-heatmap")  # the summaries' first version is replaced by the shards' one: click that one
    page.wait_for_function("() => { const el = document.querySelector('#ranks-heatmap .js-plotly-plot');"
                           " return el && el.layout && el.layout.meta && el.layout.meta.source === 'shards'; }",
                           timeout=30_000)
    click_heatmap_until_focused(page)
    rank = int(focus_value(page))
    assert 20 <= rank < RANKS
    wait_named(page, "ranks-stat-graph", f"rank {rank}")
    page.wait_for_function(f"() => [...document.querySelectorAll('.ranks-table tr.tv-focused button')]"
                           f".some(b => b.innerText === '{rank}')", timeout=20_000)  # the table turned to its page
    page.locator("#nav-layers").click()  # the focus travels with the session, not the address
    page.wait_for_function(f"() => {{ const v = document.querySelector('#layers-rank');"
                           f" return v && v.innerText.includes('rank {rank}'); }}", timeout=20_000)
    assert f"rank {rank}" in traces(page, "layers-heatmap")["title"]
    page.locator("#nav-scalars").click()
    wait_named(page, "scalar-graph", f"rank {rank}")
    page.locator("#nav-overview").click()
    page.wait_for_function(f"() => [...document.querySelectorAll('.run-card tr.tv-focused button')]"
                           f".some(b => b.innerText === '{rank}')", timeout=20_000)
    # a rank's button in a table, and the address, focus too
    page.locator(".run-card button.tv-rank-button", has_text=re.compile("^63$")).click()
    page.wait_for_function("() => document.querySelector('#focus-input').value === '63'", timeout=20_000)
    page.goto(f"{server}/ranks?runs={wide}&rank=5&stat=scalar:loss")  # as a finding's evidence link reads
    wait_named(page, "ranks-stat-graph", "rank 5", timeout=30_000)
    assert focus_value(page) == "5" and traces(page, "ranks-stat-graph")["title"].startswith("loss across ranks")
    assert page.js_errors == []


def _figure_sources(responses: list, graph_id: str) -> list:
    """layout.meta.source of each figure the server sent for graph_id, in the order the responses came."""
    import json
    out = []
    for body in responses:
        figure = json.loads(body).get("response", {}).get(graph_id, {}).get("figure")
        if figure:
            out.append((figure.get("layout", {}).get("meta") or {}).get("source"))
    return out


def test_the_ranks_page_draws_from_the_summaries_first_then_from_every_shard(server, page, wide):
    responses = []
    page.on("response", lambda r: responses.append(r) if "_dash-update-component" in r.url and r.status == 200
            else None)
    page.goto(f"{server}/ranks?runs={wide}")
    page.wait_for_function("() => { const el = document.querySelector('#ranks-heatmap .js-plotly-plot');"
                           " return el && el.layout && el.layout.meta && el.layout.meta.source === 'shards'; }",
                           timeout=30_000)
    assert _figure_sources([r.text() for r in responses], "ranks-stat-graph")[:2] == ["summaries", "shards"]
    assert traces(page, "ranks-heatmap")["points"] == [RANKS]
    assert page.js_errors == []


@pytest.fixture(scope="session")
def hollow(runs_root):
    """72 ranks whose shards 1..71 cannot be read while their summaries can (tests.app.conftest.hollow_run)."""
    hollow_run(str(runs_root / "hollow"))
    return "hollow"


def test_the_overviews_first_figure_is_drawn_from_the_rank_summaries(server, page, hollow):
    page.goto(f"{server}/?runs={hollow}")
    wait_named(page, "overview-loss", "rank 71 (slowest)", timeout=30_000)  # step times of unreadable shards
    loss = traces(page, "overview-loss")
    assert "median rank" in loss["names"] and loss["title"].startswith("loss across ranks")
    assert page.js_errors == []
