"""The real app, started by `tview dashboard`, driven by headless Chromium: pages, figures, controls, live runs."""

import re

import pytest

from tests.conftest import live_writer
from tview.diagnose import CLEAN_MESSAGE

pytestmark = pytest.mark.slow

PAGES = {  # path -> graphs that must hold data
    "/": ["overview-loss"],
    "/scalars": ["scalar-graph"],
    "/layers": ["layers-heatmap", "layers-histogram"],
    "/ranks": ["ranks-stat-graph", "ranks-heatmap", "ranks-step-time", "ranks-noise-scale"],
    "/filters": ["filters-grid", "filters-maps"],
    "/3d": ["net-3d", "traj-3d", "sim-3d"],
}

TRACES_JS = """id => {
  const el = document.querySelector('#' + CSS.escape(id) + ' .js-plotly-plot');
  if (!el || !el.data) return null;
  const size = {f8: 8, f4: 4, i8: 8, u8: 8, i4: 4, u4: 4, i2: 2, u2: 2, i1: 1, u1: 1};
  const n = a => {  // plain arrays, or plotly's typed-array JSON ({dtype, bdata, shape})
    if (!a) return 0;
    if (a.length !== undefined) return a.length;
    if (a.bdata) return a.shape ? +String(a.shape).split(',')[0]
                                : atob(a.bdata).length / (size[a.dtype.replace(/[<>|=]/, '')] || 8);
    return 0;
  };
  return {title: (el.layout && el.layout.title && (el.layout.title.text || el.layout.title)) || '',
          points: el.data.map(t => n(t.z || t.x)),
          last_x: Math.max(-Infinity, ...(el._fullData || []).flatMap(t =>  // the largest x drawn (decoded arrays)
            Array.from(t.x || []).filter(v => typeof v === 'number'))),
          names: el.data.filter(t => t.showlegend !== false).map(t => t.name || ''),
          annotations: ((el.layout && el.layout.annotations) || []).map(a => a.text)};
}"""


def traces(page, graph_id, timeout=30_000):
    """Wait until the graph drew at least one trace with points; return its title and point counts."""
    try:
        page.wait_for_function(f"""() => {{ const r = ({TRACES_JS})('{graph_id}');
            return r && r.points.length > 0 && r.points.some(n => n > 0); }}""", timeout=timeout)
    except Exception as exc:  # say which graph, on which page, in what state
        state = page.evaluate(TRACES_JS, graph_id)
        raise AssertionError(f"{page.url}: graph {graph_id} drew no data: {state}") from exc
    return page.evaluate(TRACES_JS, graph_id)


def test_every_page_loads_and_every_figure_has_data(server, page, tmp_path):
    for path, graphs in PAGES.items():
        page.goto(f"{server}{path}?runs=demo")
        for g in graphs:
            t = traces(page, g)
            assert max(t["points"]) > 0, (path, g, t)
            assert max(t["points"]) <= 5000, (path, g, t)  # downsampled on read
        page.wait_for_timeout(300)
        page.screenshot(path=str(tmp_path / f"page{path.replace('/', '_') or '_'}.png"), full_page=True)
    assert page.js_errors == []
    # The overview tells the demo's facts: 2 ranks, both closed, and what the health check found.
    page.goto(f"{server}/?runs=demo")
    card = page.locator(".run-card").first
    card.wait_for()
    text = card.inner_text()
    assert "2 of 2 rank(s) readable" in text and "LeNet5" in text
    assert text.count("closed") >= 2
    # what tview cost each rank (its tview_time over the steps' time), a percentage per rank
    assert "tview's share" in text and len(re.findall(r"\b\d+\.\d%", text)) == 2, text
    # Health has one source, tview.diagnose, in the run's own card (one card per run): the card's one health list
    # is the diagnosis's; the clean demo run says so in one line
    panel = card.locator(".tv-diagnosis-panel").first
    panel.wait_for(timeout=30_000)
    assert card.locator(".tv-health").count() == 1 and card.locator(".diagnosis-card .tv-health").count() == 1
    assert "diagnosis" in panel.inner_text()
    assert [li.inner_text() for li in panel.locator("li").all()] == [CLEAN_MESSAGE]
    # Two ranks are two lines, not a band of two
    page.goto(f"{server}/ranks?runs=demo")
    names = traces(page, "ranks-stat-graph")["names"]
    assert not any("of ranks" in n for n in names) and {"rank 0", "rank 1"} <= {n.split(" (")[0] for n in names}
    page.wait_for_function("() => document.querySelector('#ranks-page-label').innerText.includes('ranks)')",
                           timeout=20_000)  # the table comes beside the first figure, not before it
    assert page.locator("#ranks-page-label").inner_text().strip() == "page 1 of 1 (2 ranks)"
    ranks_table = page.locator(".ranks-table").inner_text()
    assert "tview's share" in ranks_table and len(re.findall(r"\b\d+\.\d%", ranks_table)) == 2, ranks_table
    # The gradient noise scale is tview.diagnose's: the critical batch size next to the batch size in use (2 ranks
    # x 32), the undefined stretches in the legend with their reason, and one layer's estimate on request
    noise = traces(page, "ranks-noise-scale")
    assert noise["names"][0] == "B_simple" and "whole network" in noise["title"], noise
    assert all(n.startswith("undefined: ") and n.endswith(")") for n in noise["names"][1:-2]), noise
    assert noise["names"][-2] == "batch size in use 64" and noise["names"][-1].startswith("critical batch size ")
    note = page.locator("#ranks-noise-note").inner_text()
    assert re.match(r"critical batch size ~ \d+ \(.*x\) next to the batch size in use 64", note), note
    page.locator("#ranks-noise-layer").click()
    page.get_by_role("option", name="fc1", exact=True).click()
    page.wait_for_function(f"() => ({TRACES_JS})('ranks-noise-scale').title.includes('B_simple of fc1')",
                           timeout=20_000)


def test_controls_change_what_is_shown(server, page):
    page.goto(f"{server}/layers?runs=demo")
    before = traces(page, "layers-heatmap")
    assert "grad_norm" in before["title"]
    page.locator("#layers-stat").click()
    page.get_by_role("option", name="act_zero_frac", exact=True).click()
    page.wait_for_function(f"() => ({TRACES_JS})('layers-heatmap').title.includes('act_zero_frac')", timeout=20_000)
    page.goto(f"{server}/scalars?runs=demo")
    assert traces(page, "scalar-graph")["title"] == "loss"
    page.locator("#scalar-name").click()
    page.get_by_role("option", name="step_time", exact=True).click()
    page.wait_for_function(f"() => ({TRACES_JS})('scalar-graph').title === 'step_time'", timeout=20_000)
    # two lines per rank with smoothing (raw + smoothed), one per rank without
    assert len(traces(page, "scalar-graph")["points"]) == 4
    page.locator("#scalar-smoothing [role=slider]").press("Home")  # smoothing to 0, by keyboard
    page.wait_for_function(f"() => ({TRACES_JS})('scalar-graph').points.length === 2", timeout=20_000)


def test_damaged_and_empty_runs_are_reported_and_the_app_keeps_serving(server, page):
    page.goto(f"{server}/?runs=broken,empty,demo")
    page.locator(".run-card").nth(2).wait_for(timeout=30_000)
    cards = page.locator(".run-card")
    broken, empty = cards.nth(0).inner_text(), cards.nth(1).inner_text()
    assert "1 of 2 rank(s) readable" in broken
    assert re.search(r"rank-00001\.h5: .*(truncated|damaged|not a readable)", broken), broken
    assert "0 recorded steps" in empty
    # the diagnosis panels, in the same order: the damaged run names its missing rank, the empty one says it has
    # nothing to diagnose yet (not "no findings")
    page.wait_for_function("() => [...document.querySelectorAll('.diagnosis-card')].filter(c => "
                           "!c.innerText.includes('diagnosing')).length === 3", timeout=30_000)
    panels = page.locator(".diagnosis-card")
    assert "rank_missing" in panels.nth(0).inner_text() or "rank_stopped" in panels.nth(0).inner_text()
    assert "no steps recorded yet" in panels.nth(1).inner_text() and "no findings" not in panels.nth(1).inner_text()
    assert "2 of 2 rank(s) readable" in cards.nth(2).inner_text()
    page.goto(f"{server}/layers?runs=broken")
    assert max(traces(page, "layers-heatmap")["points"]) > 0  # rank 0 of the damaged run still shows


@pytest.mark.alone  # a live writer, the server and the browser racing a deadline: not beside another test's work
def test_a_live_run_gains_steps_on_screen(server, runs_root, page, tmp_path):
    with live_writer(runs_root / "live"):
        page.goto(f"{server}/?runs=live")
        page.locator(".run-card").first.wait_for(timeout=30_000)
        page.wait_for_function("() => document.querySelector('#live-badge').innerText.includes('LIVE')", timeout=20_000)

        def shown_steps():
            m = re.search(r"(\d+) recorded steps", page.locator(".run-card").first.inner_text())
            return int(m.group(1)) if m else -1
        first = shown_steps()
        page.wait_for_function(f"""() => {{ const m = document.querySelector('.run-card').innerText
            .match(/(\\d+) recorded steps/); return m && +m[1] > {first}; }}""", timeout=20_000)
        assert shown_steps() > first
        # the chart gains a step: the last step drawn (not the point count: the loss trend is thinned, 64-127 points)
        x1 = traces(page, "overview-loss")["last_x"]
        page.wait_for_function(f"() => ({TRACES_JS})('overview-loss').last_x > {x1}", timeout=40_000)
        # the live run's diagnosis: tview diagnose's findings, made in a process of its own, and when
        note = page.locator(".diagnosis-card .tv-live-note")
        note.wait_for(timeout=30_000)
        panel = page.locator(".diagnosis-card").first.inner_text()
        assert "live run: findings as of" in note.inner_text() and "diagnosis failed" not in panel
        assert page.locator(".diagnosis-card .tv-health li").count() >= 1
        page.screenshot(path=str(tmp_path / "live-overview.png"), full_page=True)


def test_no_url_reaches_outside_the_folder_it_was_started_on(server, page):
    page.goto(f"{server}/?runs=../../etc,/etc,demo/../..,demo")
    page.locator(".run-card").first.wait_for(timeout=30_000)
    assert page.locator(".run-card").count() == 1  # only the real run was picked
    import json
    import urllib.request
    body = {"output": "..overview-body.children...overview-loss.figure..",
            "outputs": [{"id": "overview-body", "property": "children"}, {"id": "overview-loss", "property": "figure"}],
            "inputs": [{"id": "refresh", "property": "data", "value": {}},
                       {"id": "focus-rank", "property": "data", "value": None}],
            "state": [{"id": "runs", "property": "value", "value": ["../../etc", "/etc/passwd"]}],
            "changedPropIds": ["refresh.data"]}
    req = urllib.request.Request(f"{server}/_dash-update-component", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text = json.dumps(json.loads(urllib.request.urlopen(req, timeout=30).read()))
    assert "no run '../../etc' under" in text and "no run '/etc/passwd' under" in text
    assert "root:" not in text
