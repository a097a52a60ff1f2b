"""Many ranks: opening costs one shard, reading across ranks keeps a bounded number of shards open, summaries open
none; every value equals what plain h5py reads from each shard."""

import os

import h5py
import numpy as np
import pytest

import tview
from tview.store import pool
from tview.store.synthetic import write_synthetic_run

RANKS = 6


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    return write_synthetic_run(str(tmp_path_factory.mktemp("wide") / "run"), 40, ranks=RANKS, layers=4)


def open_files() -> int:
    return h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)


def plain_h5py(path: str, rank: int, column: str, layer: int):
    with h5py.File(f"{path}/rank-{rank:05d}.h5", "r") as f:
        g = f["probes/grad"]
        keep = g["measured"][:, layer] == 1
        return g["step"][:][keep], g[column][:, layer][keep]


def test_reading_across_ranks_keeps_few_shards_open(wide_run, monkeypatch):
    monkeypatch.setattr(pool, "EAGER_SHARDS", 2)
    monkeypatch.setattr(pool, "OPEN_SHARDS", 3)
    before = open_files()
    run = tview.open_run(wide_run)
    assert open_files() - before == 1  # the first shard only: what the run holds
    summaries = run.rank_summaries()
    assert open_files() - before == 1 and [s["steps"] for s in summaries.values()] == [40] * RANKS
    across = run.stat_across_ranks("grad_norm", 2)
    assert open_files() - before <= 3
    for rank in range(RANKS):
        steps, values = plain_h5py(wide_run, rank, "grad_norm", 2)
        np.testing.assert_array_equal(across[rank][0], steps)
        np.testing.assert_array_equal(across[rank][1], values)
    assert run.stat("grad_norm", 1, rank=0)[1].shape == (40,)  # the reference shard stayed open and readable
    run.close()
    assert open_files() == before


def test_a_shard_closed_to_make_room_is_reopened_on_use(wide_run, monkeypatch):
    monkeypatch.setattr(pool, "EAGER_SHARDS", 2)
    monkeypatch.setattr(pool, "OPEN_SHARDS", 2)
    with tview.open_run(wide_run) as run:
        first = {r: run.stat("grad_max_abs", 3, rank=r)[1] for r in range(RANKS)}
        again = {r: run.stat("grad_max_abs", 3, rank=r)[1] for r in reversed(range(RANKS))}
        for rank in range(RANKS):
            np.testing.assert_array_equal(first[rank], again[rank])
            np.testing.assert_array_equal(first[rank], plain_h5py(wide_run, rank, "grad_max_abs", 3)[1])


def split_script_result(script: str, run_path: str) -> dict:
    """Run one of this folder's split scripts on a run in a fresh process; its last line, as JSON (skipped on
    one core, where reads are never split)."""
    import json
    import subprocess

    from tests.conftest import PY, python_env
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: reads are never split")
    done = subprocess.run([PY, os.path.join(os.path.dirname(__file__), script), run_path],
                          capture_output=True, text=True, timeout=120, env=python_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_read_split_over_processes_equals_the_read_in_one(wide_run, tmp_path):
    import shutil
    path = str(tmp_path / "run")
    shutil.copytree(wide_run, path)
    with open(f"{path}/rank-00004.h5", "r+b") as f:  # rank 4's data damaged: a child finds it
        f.seek(4096)
        f.write(b"\xff" * 60000)
    out = split_script_result("split_read_script.py", path)
    assert out["processes"] >= 2 and 4 in out["before"]
    assert out["split_problems"] == out["whole_problems"] and list(out["split_problems"]) == ["4"]
    assert "rank-00004.h5" in out["split_problems"]["4"]
    assert out["split_after"] == out["whole_after"] == [0, 1, 2, 3, 5]
    assert out["keys"] == [list(range(RANKS))] * 2 and out["same"] and out["rank4_points"] == 0


@pytest.mark.slow
def test_diagnosis_split_over_processes_finds_what_one_process_finds(wide_run):
    out = split_script_result("split_diagnose_script.py", wide_run)
    assert out["split"]["processes"] >= 2 and out["whole"]["processes"] == 1
    assert out["split"]["findings"] and out["split"]["findings"] == out["whole"]["findings"]
    assert out["split"]["summaries"] == out["whole"]["summaries"] == {str(r): 40 for r in range(RANKS)}


def test_a_threaded_process_never_forks(monkeypatch):
    import threading

    from tview.store import parallel
    monkeypatch.setattr(parallel, "PARALLEL_FROM", 4)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert parallel.processes_for(RANKS) == 1
    finally:
        stop.set()
        other.join()


def test_info_of_a_large_run_lists_the_ranks_worth_a_look_first(tmp_path):
    from tview.cli import RANK_ROWS, info_text
    path = write_synthetic_run(str(tmp_path / "run"), 10, ranks=RANK_ROWS + 4, layers=2)
    with open(f"{path}/rank-00013.h5", "r+b") as f:
        f.truncate(2000)
    text = info_text(path)
    rows = [line for line in text.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == RANK_ROWS and rows[0].split()[0] == "13" and "truncated" in rows[0]
    assert f"4 more ranks not shown (worst first above); all ranks: {RANK_ROWS + 3} closed, 1 unreadable" in text
