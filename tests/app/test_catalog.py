"""Run ids: only runs found under the root can be opened; the address bar picks runs the same way."""

import pytest

from tview.errors import TviewError
from tview_app import runs_from_query
from tview_app.catalog import RunCatalog, run_ids


def test_only_runs_found_under_root_can_be_reached(small_run, tmp_path):
    root = tmp_path  # holds the small run as "run"
    cat = RunCatalog(str(root))
    assert cat.ids == ["run"]
    assert cat.get("run").ranks == [0]
    for bad in ["../run", "/etc", "run/../..", "..", "", None, ["run"], "run/../run/../../x"]:
        with pytest.raises(TviewError, match="no run"):
            cat.get(bad)
    assert run_ids(str(root / "run"), [str(root / "run")]) == {"run": str(root / "run")}  # root is a run


def test_the_address_bar_picks_only_known_runs():
    assert runs_from_query("?runs=a,b", ["a", "b", "c"]) == ["a", "b"]
    assert runs_from_query("?runs=../x,a", ["a"]) == ["a"]
    assert runs_from_query("", ["a"]) is None


def test_a_missing_root_is_named():
    with pytest.raises(TviewError, match="no such folder"):
        RunCatalog("/no/such/folder/here")
