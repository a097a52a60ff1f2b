"""A live run's diagnosis made in a child process (app/live_diagnosis.py): the command line's findings, made again
only when the run's files changed and the wait is over."""

import json
import os
import time

import pytest

from tview.diagnose import diagnose
from tview.diagnose.findings import make
from tview.errors import TviewError
from tview_app.live_diagnosis import LiveDiagnoses, LiveFindings, due, files_stamp, finding_from_dict, findings_in_child


def test_a_finding_read_back_from_the_command_lines_json_is_the_same_finding():
    after = make("exploding_gradients", "grows", rank=1, layer="conv2", step=12, stat="grad_norm")
    cause = make("dead_filters", "dead", layer="relu2", step=7, channels=[3, 5], stat="act_channel_zero_frac",
                 followed_by=[after])
    back = finding_from_dict(json.loads(json.dumps(cause.to_dict())))
    assert back == cause and back.followed_by[0].severity == after.severity


def test_the_stamp_changes_when_a_shard_grows_or_a_file_appears(tmp_path):
    (tmp_path / "rank-00000.h5").write_bytes(b"x" * 10)
    first = files_stamp(str(tmp_path))
    assert files_stamp(str(tmp_path)) == first
    with open(tmp_path / "rank-00000.h5", "ab") as f:
        f.write(b"y")
    grown = files_stamp(str(tmp_path))
    assert grown != first
    (tmp_path / "rank-00001.h5").write_bytes(b"")
    assert files_stamp(str(tmp_path)) != grown


def test_a_live_run_is_diagnosed_again_only_when_it_changed_and_the_wait_is_over():
    last = LiveFindings([], ("a",), at=100.0, seconds=2.0)
    assert due(None, ("a",), 0.0)  # never diagnosed
    assert not due(last, ("a",), 1000.0, every=10)  # unchanged: never again
    assert not due(last, ("b",), 105.0, every=10)  # changed, too soon
    assert due(last, ("b",), 110.0, every=10)
    slow = LiveFindings([], ("a",), at=100.0, seconds=30.0)  # a diagnosis that took 30 s waits 30 s
    assert not due(slow, ("b",), 120.0, every=10) and due(slow, ("b",), 130.0, every=10)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    from tview.store.synthetic import write_synthetic_run
    return write_synthetic_run(str(tmp_path_factory.mktemp("live") / "run"), 120, ranks=4, layers=4)


@pytest.mark.slow
def test_the_child_gives_the_findings_of_tview_diagnose(synthetic_run):
    here = diagnose(synthetic_run)
    assert here and findings_in_child(synthetic_run) == here


@pytest.mark.slow
def test_a_child_that_fails_says_why(tmp_path):
    with pytest.raises(TviewError, match="tview: error"):
        findings_in_child(str(tmp_path))  # no run here


@pytest.mark.slow
def test_findings_are_made_again_only_after_the_run_changed(synthetic_run):
    live = LiveDiagnoses(every=0.0)
    first = live.findings(synthetic_run)
    assert live.findings(synthetic_run) is first  # nothing written since: no child started
    shard = os.path.join(synthetic_run, "rank-00000.h5")
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    time.sleep(first.seconds + 0.05)  # a child is at work at most half the time
    again = live.findings(synthetic_run)
    assert again is not first and again.at >= first.at and again.findings == first.findings
    live.forget(synthetic_run)
    assert live.findings(synthetic_run) is not again
