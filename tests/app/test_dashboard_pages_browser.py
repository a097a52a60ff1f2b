"""Each page as a new user sees it, in headless Chromium against the real server on the demo run: axis titles in
the data's units, tick labels that are filter and channel indices, no title under the toolbar, one card per run,
one colour per rank, no empty heatmap rows."""

import os

import pytest

from tests.app.test_dashboard_browser import TRACES_JS, traces

pytestmark = pytest.mark.slow

GRAPHS = {  # path -> graphs drawn there
    "/": ["overview-loss"],
    "/scalars": ["scalar-graph"],
    "/layers": ["layers-heatmap", "layers-histogram"],
    "/ranks": ["ranks-stat-graph", "ranks-heatmap", "ranks-step-time", "ranks-noise-scale"],
    "/filters": ["filters-grid", "filters-input", "filters-maps"],
    "/3d": ["net-3d", "traj-3d", "sim-3d"],
}

OVERLAP_JS = """id => {  // the title's box and the toolbar's box (shown by hovering), and their overlap in px^2
  const g = document.querySelector('#' + CSS.escape(id));
  const t = g.querySelector('.gtitle'), m = g.querySelector('.modebar');
  if (!t || !m) return null;
  const a = t.getBoundingClientRect(), b = m.getBoundingClientRect();
  const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
  const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
  return {title: t.textContent, toolbar: [b.left, b.top, b.width, b.height], overlap: Math.max(0, w) * Math.max(0, h)};
}"""

AXES_JS = """id => {  // what the drawn figure shows on its 2D axes: titles and tick labels, and its annotations
  const g = document.querySelector('#' + CSS.escape(id));
  const texts = sel => [...g.querySelectorAll(sel)].map(e => e.textContent);
  return {x_title: texts('.xtitle')[0] || '', y_title: texts('.ytitle')[0] || '', x_ticks: texts('.xtick text'),
          y_ticks: texts('.ytick text'), annotations: texts('.annotation-text')};
}"""

SCENE_JS = """id => {  // a 3D figure's scene as plotly laid it out (its axis titles are drawn in WebGL)
  const el = document.querySelector('#' + CSS.escape(id) + ' .js-plotly-plot');
  const s = el._fullLayout.scene;
  return {titles: ['xaxis', 'yaxis', 'zaxis'].map(a => s[a].visible ? s[a].title.text : null),
          annotations: (s.annotations || []).map(a => a.text),
          legend: el.data.filter(t => t.showlegend).map(t => t.name)};
}"""


def line_colours(page, graph_id):
    return page.evaluate(f"""() => Object.fromEntries(document.querySelector('#{graph_id} .js-plotly-plot').data
        .filter(t => t.showlegend !== false && t.name.startsWith('rank '))
        .map(t => [t.name.split(' ')[1], t.line.color]))""")


def test_no_title_runs_under_the_toolbar_on_any_page(server, page):
    for path, graphs in GRAPHS.items():
        page.goto(f"{server}{path}?runs=demo")
        for g in graphs:
            traces(page, g)
            page.locator(f"#{g}").hover()  # the toolbar shows on hover
            box = page.evaluate(OVERLAP_JS, g)
            assert box is not None and box["title"], (path, g, box)
            assert box["overlap"] == 0, (path, g, box)
    assert page.js_errors == []


def test_filters_page_speaks_in_filters_channels_and_steps(server, page, runs_root):
    import tview
    run = tview.open_run(str(runs_root / "demo"))
    snaps = [str(s) for s in run.snapshot_steps(0)]
    page.goto(f"{server}/filters?runs=demo")
    traces(page, "filters-grid")
    grid = page.evaluate(AXES_JS, "filters-grid")
    assert grid["x_title"].startswith("filter") and grid["y_title"].startswith("input channel"), grid
    assert grid["x_ticks"] == [str(i) for i in range(6)] and grid["y_ticks"] == ["0"], grid  # conv1: 6 filters, 1 input
    maps = page.evaluate(AXES_JS, "filters-maps")
    assert maps["annotations"] == [f"ch {i}" for i in range(6)] and maps["x_ticks"] == [], maps
    assert "input" in traces(page, "filters-input")["title"]
    # the slider's stops are the snapshot steps, its labels among them, the newest picked, the label saying which
    marks = [m for m in page.locator("#filters-step .dash-slider-mark").all_inner_texts() if m]
    assert marks[0] == snaps[0] and marks[-1] == snaps[-1] and set(marks) <= set(snaps), marks
    assert page.locator("#filters-step-label").inner_text() == f"snapshot at step {snaps[-1]} ({len(snaps)} of " \
                                                                f"{len(snaps)})"
    # conv2: 16 filters across, 6 input channels down
    page.locator("#filters-layer").click()
    page.get_by_role("option", name="conv2", exact=True).click()
    page.wait_for_function(f"() => ({TRACES_JS})('filters-grid').title.includes('conv2')", timeout=20_000)
    grid = page.evaluate(AXES_JS, "filters-grid")
    assert grid["x_ticks"] == [str(i) for i in range(16)] and grid["y_ticks"] == [str(i) for i in range(6)], grid
    # play moves to the first snapshot after the newest (back to the first)
    page.locator("#filters-play").click()
    page.wait_for_function(f"""() => document.querySelector('#filters-step-label').innerText
        .startsWith('snapshot at step {snaps[0]} ')""", timeout=20_000)
    page.locator("#filters-play").click()
    # moved by hand (the keyboard's End), the label follows the slider
    page.locator("#filters-step [role=slider]").first.press("End")
    page.wait_for_function(f"""() => document.querySelector('#filters-step-label').innerText
        == 'snapshot at step {snaps[-1]} ({len(snaps)} of {len(snaps)})'""", timeout=20_000)


def test_3d_page_names_its_axes_layers_and_points(server, page):
    page.goto(f"{server}/3d?runs=demo")
    for g in ("net-3d", "traj-3d", "sim-3d"):
        traces(page, g)
    net = page.evaluate(SCENE_JS, "net-3d")
    assert [a.split(" (")[0] for a in net["annotations"]] == ["conv1", "relu1", "conv2", "relu2", "fc1", "relu3", "fc2",
                                                             "relu4", "fc3"], net
    traj = page.evaluate(SCENE_JS, "traj-3d")
    assert traj["titles"] == ["dir 1", "dir 2", "dir 3"] and traj["annotations"][0] == "step 0", traj
    sim = page.evaluate(SCENE_JS, "sim-3d")
    assert sim["titles"] == ["PC 1", "PC 2", "PC 3"] and sim["legend"], sim
    card = page.locator("#sim-groups").inner_text()
    assert "Each point is one filter" in card and ("most alike" in card or "group 1" in card), card
    # the colour menu shows its whole label
    label = page.locator("#net-stat").inner_text()
    assert label.strip() == "zero fraction", label


def test_one_card_per_run_and_one_colour_per_rank_everywhere(server, page):
    page.goto(f"{server}/?runs=demo")
    page.locator(".run-card .tv-diagnosis-panel").first.wait_for(timeout=30_000)
    assert page.locator(".tv-card").count() == 1  # the diagnosis is inside the run's card
    overview = line_colours(page, "overview-loss") if traces(page, "overview-loss") else {}
    page.goto(f"{server}/scalars?runs=demo")
    traces(page, "scalar-graph")
    scalars = line_colours(page, "scalar-graph")
    page.goto(f"{server}/ranks?runs=demo")
    traces(page, "ranks-step-time")
    step_time = line_colours(page, "ranks-step-time")
    assert overview == scalars == step_time and len(set(overview.values())) == 2, (overview, scalars, step_time)
    assert "busy time" in traces(page, "ranks-step-time")["title"]


def test_layers_heatmap_has_a_row_only_where_the_statistic_is_measured(server, page, runs_root):
    page.goto(f"{server}/layers?runs=demo&stat=grad_norm")
    traces(page, "layers-heatmap")
    rows = page.evaluate(AXES_JS, "layers-heatmap")["y_ticks"]
    assert rows == ["conv1", "conv2", "fc1", "fc2", "fc3"], rows  # ReLUs have no gradient of their own


def test_screenshots_of_every_page_as_the_readme_takes_them(server, browser, tmp_path):
    from PIL import Image

    from tview_app.screenshots import PAGES, shoot
    written = shoot(server, "demo", str(tmp_path), browser=browser)
    assert [os.path.basename(p) for p in written] == [f"dashboard-{name}.png" for name in PAGES]
    for path in written:
        width, height = Image.open(path).size
        assert width == 1400 and height >= 1000, (path, width, height)  # the whole page in a 1400 x 1000 window


def test_a_scalar_turns_the_ranks_layer_menu_off_and_durations_say_their_unit(server, page):
    page.goto(f"{server}/ranks?runs=demo&stat=scalar:step_time")
    page.wait_for_function(f"() => (({TRACES_JS})('ranks-stat-graph') || {{title: ''}}).title"
                           ".startsWith('step_time per rank')", timeout=30_000)
    assert page.locator("#ranks-layer").is_disabled()
    assert "step_time is a scalar" in page.locator("#ranks-layer-hint").inner_text()
    assert page.evaluate(AXES_JS, "ranks-stat-graph")["y_title"] == "step_time (ms)"
    traces(page, "ranks-step-time")
    assert page.evaluate(AXES_JS, "ranks-step-time")["y_title"] in ("busy_time (ms)", "step_time (ms)")
    page.wait_for_function("() => /\\d+\\.\\d ms/.test(document.querySelector('.ranks-table').innerText)",
                           timeout=20_000)
    page.locator("#ranks-stat").click()
    page.get_by_role("option", name="grad_norm", exact=True).click()
    page.wait_for_function("() => !document.querySelector('#ranks-layer').disabled", timeout=20_000)
    assert page.locator("#ranks-layer-hint").inner_text() == ""
