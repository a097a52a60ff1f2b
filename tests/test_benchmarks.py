"""Smoke runs of the benchmark scripts at tiny sizes: they run end to end and write what they promise.
(Their figures are measured by running them by hand; no time is asserted here.)"""

import json
import subprocess

import pytest

from tests.conftest import PY, REPO, python_env

pytestmark = pytest.mark.slow


def run(args, timeout=600):
    proc = subprocess.run([PY] + args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(python_env(), WANDB_SILENT="true", WANDB_MODE="offline"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_compare_writes_every_section(tmp_path):
    run(["benchmarks/compare.py", "--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    configs = {r["config"] for r in results["overhead"]}
    assert {"plain", "tview default, every step", "TensorBoard histograms, every step",
            "wandb.watch(log='all'), every step"} <= configs
    assert {r["model"] for r in results["overhead"]} == {"lenet", "resnet"}
    assert results["writer"]["throughput_ratio"] > 0 and results["size"]["tensorboard_bytes"] > 0
    assert [r["steps"] for r in results["load"]] == [100, 1000] and [r["ranks"] for r in results["scale"]] == [8, 64]
    md = (tmp_path / "benchmarks.md").read_text()
    for heading in ("## 1. Training overhead", "## 2. Write throughput", "## 3. Store size", "## 4. Load",
                    "## 5. Scale"):
        assert heading in md


def test_dashboard_load_and_overhead_scripts_run():
    out = run(["benchmarks/dashboard_load.py", "--sizes", "100,1000", "--ranks", "2", "--layers", "4", "--repeat", "1"])
    assert "| 100 | 2 x 4 |" in out and "| 1,000 | 2 x 4 |" in out
    out = run(["benchmarks/overhead.py", "--model", "lenet", "--steps", "30"])
    assert "default, every step" in out and "plain" in out


def test_many_ranks_reader_part_runs(tmp_path):
    out = run(["benchmarks/many_ranks.py", "--out", str(tmp_path), "--ranks", "2,3", "--parts", "reader"])
    rows = [line for line in out.splitlines() if line.startswith(("| 2 |", "| 3 |"))]
    assert len(rows) == 2 and rows[0].split("|")[4].strip() == "1x"


def test_many_ranks_rows_part_times_this_checkout_beside_another(tmp_path):
    out = run(["benchmarks/many_ranks.py", "--out", str(tmp_path), "--ranks", "2", "--parts", "rows", "--before", REPO])
    rows = [line for line in out.splitlines() if line.startswith("| 2 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["this", "before"]
    assert all(r.split("|")[7].strip().startswith("yes (") for r in rows)  # the same findings on both sides
