"""`tview demo` says how far it is: one line from rank 0 about every 10% of the steps."""

import re

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("torch")

from tview.demo import progress_steps, run_demo  # noqa: E402


def test_demo_reports_progress_every_tenth(tmp_path, capsys):
    run_demo(str(tmp_path / "demo"), ranks=1, steps=30)  # what `tview demo --ranks 1 --steps 30` runs
    lines = re.findall(r"step (\d+)/30 \((\d+)%\)  loss [0-9.]+", capsys.readouterr().out)
    assert [int(s) for s, _ in lines] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert [int(p) for _, p in lines] == list(range(10, 101, 10))


def test_progress_steps_for_short_and_long_runs():
    assert progress_steps(5) == {1, 2, 3, 4, 5}  # fewer steps than reports: each step once
    assert progress_steps(1500) == set(range(150, 1501, 150))
