"""Hostile requests and planted symbolic links against the real `tview dashboard` server, over HTTP: a 400
or a refusal that says why, never a 500, a huge reply or a file from outside the runs folder."""

import json
import os
import shutil
import urllib.error
import urllib.request

import pytest

from tview_app.catalog import RunCatalog, files_outside
from tview_app.guard import bad_callback_body, bad_runs_value


def _overview_body(runs):
    return {"output": "..overview-body.children...overview-loss.figure..",
            "outputs": [{"id": "overview-body", "property": "children"}, {"id": "overview-loss", "property": "figure"}],
            "inputs": [{"id": "refresh", "property": "data", "value": {}},
                       {"id": "focus-rank", "property": "data", "value": None}],
            "state": [{"id": "runs", "property": "value", "value": runs}], "changedPropIds": ["refresh.data"]}


def _post(server, data: bytes):
    req = urllib.request.Request(f"{server}/_dash-update-component", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_run_choices_that_are_not_run_ids_are_refused_with_a_400(server):
    for runs in (7, {"a": 1}, [1, 2], ["x"] * 65):
        status, text = _post(server, json.dumps(_overview_body(runs)).encode())
        assert status == 400 and b"'runs' must be a run id" in text, (runs, status, text[:200])
    status, _ = _post(server, json.dumps(_overview_body(["demo"])).encode())
    assert status == 200  # the real choice still works


@pytest.mark.slow
def test_a_ten_megabyte_body_gets_413_not_a_bigger_reply(server):
    status, text = _post(server, b'{"state": [' + b" " * (10 << 20) + b"]}")
    assert status == 413 and len(text) < 10_000


def test_pure_checks():
    assert bad_runs_value(None) is None and bad_runs_value("a") is None and bad_runs_value(["a", "b"]) is None
    assert bad_runs_value(7) and bad_runs_value([None]) and bad_callback_body([]) and bad_callback_body(None)
    assert bad_callback_body(_overview_body(["a"])) is None


@pytest.mark.slow  # runs_root trains the 2-rank demo in 2 processes
def test_a_symlink_out_of_the_runs_folder_is_not_served(tmp_path, runs_root):
    root = tmp_path / "root"
    run = root / "linked"
    shutil.copytree(runs_root / "demo", run)
    outside = tmp_path / "outside.h5"
    shutil.move(run / "rank-00001.h5", outside)
    os.symlink(outside, run / "rank-00001.h5")  # a shard that resolves outside the folder served
    assert files_outside(str(run), str(root)) == [str(run / "rank-00001.h5")]
    catalog = RunCatalog(str(root))
    with pytest.raises(Exception, match="rank-00001.h5: resolves outside"):
        catalog.get("linked")
