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
    assert _query(panel.evidence_link("exp 1", f)) == (
        "/layers", {"runs": "exp 1", "rank": "1", "layer": "conv2", "stat": "act_nan", "step": "100"})
    dead = make("dead_filters", "m", layer="relu2", step=7, channels=[3, 5], stat="act_channel_zero_frac")
    path, q = _query(panel.evidence_link("r", dead))
    assert path == "/layers" and q["stat"] == "act_zero_frac" and q["channels"] == "3,5" and "rank" not in q


def test_a_rank_fault_links_to_the_ranks_page():
    slow = make("slow_rank", "m", rank=2, step=5, stat="busy_time")
    assert _query(panel.evidence_link("r", slow)) == ("/ranks", {"runs": "r", "rank": "2", "stat": "scalar:busy_time",
                                                                 "step": "5"})
    rep = make("replicas_differ", "m", layer="fc2", step=9, stat="weight_sum")
    assert _query(panel.evidence_link("r", rep))[1]["stat"] == "weight_sum"
    loss = make("nonfinite", "m", rank=0, step=3, tensor="loss")
    assert _query(panel.evidence_link("r", loss))[0] == "/scalars"


def test_the_list_says_a_clean_run_in_one_line_and_lists_findings_worst_first():
    clean = panel.findings_list("r", [])
    assert len(clean.children) == 1 and clean.children[0].children.startswith("no findings")
    items = panel.findings_list("r", [make("nonfinite", "NaN here", rank=1, layer="conv2", step=4)]).children
    assert items[0].className == "tv-error finding-nonfinite"
    link = items[0].children[-1]
    assert link.href.startswith("/layers?runs=r&rank=1&layer=conv2")


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
    assert item.children[-1].href == "/ranks?runs=exp&layer=fc&stat=weight_sum&step=2"


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


def test_the_panel_and_the_command_line_give_the_same_findings(tmp_path):
    """One source of truth: the overview's panel lists exactly what `tview diagnose --json` says, in its order."""
    pytest.importorskip("torch")
    import json
    import subprocess

    import tview
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
    shown = [panel.finding_of_item(item) for item in items]
    assert listed and shown == listed
