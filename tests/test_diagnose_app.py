"""The overview's diagnosis panel (app/findings.py): links to the evidence, one line for a clean run."""

from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("dash")

from app import findings as panel  # noqa: E402
from tview.diagnose.findings import make  # noqa: E402


def _query(href):
    u = urlparse(href)
    return u.path, {k: v[0] for k, v in parse_qs(u.query).items()}


def test_a_layer_fault_links_to_the_layer_heatmap_at_that_layer_with_the_rank_focused():
    f = make("nonfinite", "m", rank=1, layer="conv2", step=100, tensor="activation", stat="act_nan")
    assert _query(panel.page_link("exp 1", f)) == (
        "/layers", {"runs": "exp 1", "rank": "1", "layer": "conv2", "stat": "act_nan", "step": "100"})
    dead = make("dead_filters", "m", layer="relu2", step=7, channels=[3, 5], stat="act_channel_zero_frac")
    path, q = _query(panel.page_link("r", dead))
    assert path == "/layers" and q["stat"] == "act_zero_frac" and q["channels"] == "3,5" and "rank" not in q


def test_show_links_land_on_the_evidence_page_naming_the_finding():
    dead = make("dead_filters", "m", layer="relu2", step=7, channels=[3, 5], stat="act_channel_zero_frac")
    path, q = _query(panel.evidence_link("r", dead))
    assert path == "/evidence" and q == {"runs": "r", "kind": "dead_filters", "layer": "relu2",
                                         "stat": "act_channel_zero_frac", "step": "7", "channels": "3,5"}
    from app.pages.evidence import finding_of
    back = finding_of("?" + panel.evidence_link("r", dead).split("?", 1)[1])
    assert (back.kind, back.layer, back.step, back.channels, back.rank) == ("dead_filters", "relu2", 7, [3, 5], None)


def test_a_rank_fault_links_to_the_ranks_page():
    slow = make("slow_rank", "m", rank=2, step=5, stat="busy_time")
    assert _query(panel.page_link("r", slow)) == ("/ranks", {"runs": "r", "rank": "2", "stat": "scalar:busy_time",
                                                             "step": "5"})
    rep = make("replicas_differ", "m", layer="fc2", step=9, stat="weight_sum")
    assert _query(panel.page_link("r", rep))[1]["stat"] == "weight_sum"
    loss = make("nonfinite", "m", rank=0, step=3, tensor="loss")
    assert _query(panel.page_link("r", loss))[0] == "/scalars"
    lr = make("lr_jump", "m", step=120, stat="lr")
    assert _query(panel.page_link("r", lr)) == ("/scalars", {"runs": "r", "scalar": "lr", "step": "120"})


def test_the_list_says_a_clean_run_in_one_line_and_lists_findings_worst_first():
    clean = panel.findings_list("r", [])
    assert len(clean.children) == 1 and clean.children[0].children.startswith("no findings")
    items = panel.findings_list("r", [make("nonfinite", "NaN here", rank=1, layer="conv2", step=4)]).children
    assert items[0].className == "tv-error finding-nonfinite"
    link = items[0].children[-1]
    assert link.href.startswith("/evidence?runs=r&kind=nonfinite&rank=1&layer=conv2")


def test_the_panel_diagnoses_a_real_run(tmp_path):
    pytest.importorskip("torch")
    import tview
    from tests.test_diagnose import _close, _record

    def nudge(rank, step, model):
        if rank == 1 and step == 2:
            model.fc.weight.data[0, 0] += 1e-2
    out, recs = _record(tmp_path, steps=6, fault=nudge)
    _close(recs)
    with tview.open_run(out) as run:
        div = panel.diagnosis_panel("exp", run)
    item = div.children[1].children[0]
    assert item.className == "tv-error finding-replicas_differ"
    assert item.children[-1].href == "/evidence?runs=exp&kind=replicas_differ&layer=fc&stat=weight_sum&step=2"


def test_the_evidence_figure_marks_the_channels_the_layer_the_rank_and_the_step(tmp_path):
    pytest.importorskip("torch")
    import tview
    from tests.test_diagnose import _close, _record
    out, recs = _record(tmp_path, steps=8)
    _close(recs)
    with tview.open_run(out) as run:
        fig = panel.evidence_figure(run, "dead_filters", "conv2", "act_channel_zero_frac", None, 5, [1, 2])
        names = {s.name for s in fig.layout.shapes}
        assert {"channel-1", "channel-2", "finding-step"} <= names and fig.data[0].type == "heatmap"
        assert {s.x0 for s in fig.layout.shapes if s.name.startswith("channel-")} == {5}  # outlined from the onset
        assert [s.x0 for s in fig.layout.shapes if s.name == "finding-step"] == [5]
        fig = panel.evidence_figure(run, "exploding_gradients", "conv2", "grad_norm", None, 3, [])
        assert "layer-conv2" in {s.name for s in fig.layout.shapes}
        fig = panel.evidence_figure(run, "slow_rank", None, "step_time", 1, 4, [])
        thick = [t.name for t in fig.data if t.line.width == 3]
        assert thick == ["rank 1"] and len(fig.data) == 2


def test_findings_of_one_kind_beyond_three_are_counted_on_one_line_at_scale():
    """1024 ranks, 60 of them slow: the panel lists the first three and counts the rest, naming their ranks."""
    slow = [make("slow_rank", f"rank {r}: slow", rank=r, step=10 + r) for r in range(60)]
    nan = make("nonfinite", "rank 9: NaN", rank=9, step=3)
    shown = panel.fold([nan] + slow)
    assert shown[:4] == [nan] + slow[:3]
    folded = shown[4]
    assert isinstance(folded, panel.Folded) and (folded.kind, folded.count, folded.severity) == ("slow_rank", 57,
                                                                                                 "warning")
    assert folded.message == "... and 57 more slow_rank findings (ranks 3, 4, 5, 6, 7, 8, 9, 10 ...)"
    assert len(shown) == 5 and panel.fold([]) == []
    items = panel.findings_list("r", [nan] + slow).children
    assert len(items) == 5 and items[-1].className == "tv-warning finding-slow_rank tv-folded"


def test_a_run_without_steps_says_so_instead_of_no_findings():
    items = panel.findings_list("r", [], steps=0).children
    assert [i.children for i in items] == [panel.NO_STEPS]
    missing = make("rank_missing", "rank 1: no readable shard", rank=1)
    items = panel.findings_list("r", [missing], steps=0).children
    assert items[0].children == panel.NO_STEPS and items[1].className == "tv-error finding-rank_missing"


SHAPES_JS = """() => {
  const el = document.querySelector('#evidence-graph .js-plotly-plot');
  if (!el || !el.data || !el.data.length) return null;
  return {type: el.data[0].type, shapes: ((el.layout && el.layout.shapes) || []).map(s => [s.name, s.x0])};
}"""


@pytest.mark.slow
def test_the_show_link_of_a_stuck_channel_lands_on_it_marked_in_a_real_browser(tmp_path, browser):
    """The real server and Chromium: the overview lists the finding (a conv channel pushed below zero for good:
    TinyCNN's ReLU is functional, so its gradient stays zero: frozen_filters); its "show" link opens the
    per-channel heatmap of that layer with the channel outlined from the step it stopped, that step dashed."""
    pytest.importorskip("torch")
    pytest.importorskip("playwright")
    import os

    import torch

    from tests.conftest import python_env
    from tests.test_diagnose import _close, _record
    from tview.demo import free_port
    from tview_app.testing import start_dashboard

    def kill(rank, step, model):
        if step == 5:
            with torch.no_grad():
                model.conv2.bias[3] = -1e3
    out, recs = _record(tmp_path, steps=30, fault=kill, name="dead")
    _close(recs)
    port = free_port()
    proc = start_dashboard(str(tmp_path), port, str(tmp_path / "dashboard.log"), env=python_env())
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/?runs=dead")
        link = page.locator(".finding-frozen_filters .tv-finding-link").first
        link.wait_for(timeout=60_000)
        link.click()
        page.wait_for_function(f"() => ({SHAPES_JS})() !== null", timeout=60_000)
        drawn = page.evaluate(SHAPES_JS)
        page.screenshot(path=os.path.join(str(tmp_path), "evidence.png"))
    finally:
        ctx.close()
        proc.terminate()
        proc.wait(timeout=10)
    assert drawn["type"] == "heatmap"
    # set after step 5's backward: from the forward of step 6 on the channel's gradient is zero
    assert ["channel-3", 6] in drawn["shapes"] and ["finding-step", 6] in drawn["shapes"]


@pytest.mark.slow
def test_the_panel_and_the_command_line_give_the_same_findings(tmp_path):
    """One source of truth: the overview's panel lists exactly what `tview diagnose --json` says, in its order."""
    pytest.importorskip("torch")
    import json
    import subprocess

    from dash import dcc

    import tview
    from app.pages.evidence import finding_of
    from tests.conftest import PY, REPO, python_env
    from tests.test_diagnose import _close, _record

    def nudge(rank, step, model):
        if rank == 1 and step == 3:
            model.fc.weight.data[0, 0] += 1e-2
    out, recs = _record(tmp_path, steps=8, fault=nudge)
    _close(recs)
    cli = subprocess.run([PY, "-m", "tview.cli", "diagnose", out, "--json"], capture_output=True, text=True,
                         cwd=REPO, env=python_env(), timeout=120)
    listed = [(f["kind"], f["rank"], f["layer"], f["step"]) for f in json.loads(cli.stdout)]
    with tview.open_run(out) as run:
        items = panel.diagnosis_panel("exp", run).children[1].children
    links = [next(c for c in item.children if isinstance(c, dcc.Link)).href for item in items]
    shown = [(f.kind, f.rank, f.layer, f.step) for f in (finding_of("?" + h.split("?", 1)[1]) for h in links)]
    assert listed and shown == listed
