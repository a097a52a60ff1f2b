"""A closed shard's steps, flags and scalars are kept per file identity: a reopened shard reads the same values, and
a shard its writer appended to since (a resumed run) is read afresh, never from what was kept."""

import h5py
import numpy as np
import pytest

import tview
from tview.store import pool, settled
from tview.store.synthetic import write_synthetic_run

RANKS = 4


@pytest.fixture
def closed_run(tmp_path):
    settled.forget_all()
    return write_synthetic_run(str(tmp_path / "run"), 30, ranks=RANKS, layers=4)


def reads(run, rank: int) -> dict:
    """What diagnosis reads of a rank: a scalar, a layer statistic's matrix and a per-layer series."""
    steps, matrix = run.stat_matrix("grad_norm", rank)
    return {"loss": run.scalar("loss", rank), "matrix": (steps, np.ma.getdata(matrix)),
            "series": run.stat("weight_norm", 2, rank), "names": run.scalar_names(rank)}


def append_a_step(path: str, rank: int, loss: float):
    """Another recorded step on a rank's scalars, as a resumed writer adds it (the file changes on disk)."""
    with h5py.File(f"{path}/rank-{rank:05d}.h5", "r+") as f:
        g = f["scalars"]
        n = g["step"].shape[0]
        for name in ("values", "measured", "wall_time", "step"):
            g[name].resize(n + 1, axis=0)
        g["values"][n] = np.full(g["values"].shape[1], np.nan)
        g["values"][n, 0] = loss
        g["measured"][n] = g["measured"][n - 1]
        g["wall_time"][n] = g["wall_time"][n - 1] + 1
        g["step"][n] = g["step"][n - 1] + 1


def test_a_shard_reopened_unchanged_reads_what_it_read_first(closed_run, monkeypatch):
    monkeypatch.setattr(pool, "EAGER_SHARDS", 1)
    monkeypatch.setattr(pool, "OPEN_SHARDS", 2)  # every pass over the ranks reopens them
    with tview.open_run(closed_run) as run:
        first = {r: reads(run, r) for r in run.ranks}
        again = {r: reads(run, r) for r in reversed(run.ranks)}
    for rank in range(RANKS):
        assert first[rank]["names"] == again[rank]["names"]
        for key in ("loss", "matrix", "series"):
            for a, b in zip(first[rank][key], again[rank][key]):
                np.testing.assert_array_equal(a, b)


def test_kept_arrays_cannot_be_changed_by_a_caller(closed_run):
    with tview.open_run(closed_run) as run:
        for _ in range(2):
            steps, values = run.scalar("loss", 1)
        with pytest.raises(ValueError):
            values[0] = 1e9


def check_append_read_afresh(path: str, append):
    with tview.open_run(path) as run:
        for _ in range(2):
            before = {r: reads(run, r) for r in run.ranks}
        append(path, 2, 123.0)
        steps, loss = run.scalar("loss", 2)
        assert len(steps) == len(before[2]["loss"][0]) + 1 and loss[-1] == 123.0
        assert len(run.scalar("loss", 1)[0]) == len(before[1]["loss"][0])
    with tview.open_run(path) as run:
        assert run.scalar("loss", 2)[1][-1] == 123.0
        assert run.steps(2)[-1] == before[2]["loss"][0][-1] + 1


def test_a_shard_appended_to_after_it_was_read_is_read_afresh(closed_run, monkeypatch):
    monkeypatch.setattr(pool, "EAGER_SHARDS", 1)
    monkeypatch.setattr(pool, "OPEN_SHARDS", 2)  # rank 2 is closed to make room, and reopened after the change
    check_append_read_afresh(closed_run, append_a_step)


@pytest.mark.slow
def test_a_shard_changed_by_another_process_while_open_is_read_afresh(closed_run):
    import subprocess
    import sys

    from tests.conftest import python_env

    def append_elsewhere(path, rank, loss):  # file locking off (as on many shared file systems): else it waits
        code = f"from tests.store.test_settled import append_a_step; append_a_step({path!r}, {rank}, {loss})"
        env = {**python_env(), "HDF5_USE_FILE_LOCKING": "FALSE"}
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)
    check_append_read_afresh(closed_run, append_elsewhere)


@pytest.mark.slow
def test_a_shard_read_while_its_writer_runs_follows_it_and_counts_as_settled_once_closed(tmp_path):
    """A shard whose writer holds it open is refreshed at every read (each read sees the rows flushed since); once
    the writer closed it (the superblock's flags cleared) it is settled, and a killed writer's never is."""
    from tests.store.test_store import readable_steps, start_writer, wait_for
    from tview.store.h5open import check_shard_file
    path = str(tmp_path / "live")
    shard = f"{path}/rank-00000.h5"
    proc = start_writer(path, 40, 0.1)
    try:
        wait_for(lambda: readable_steps(path), what="first flushed steps")
        with tview.open_run(path) as run:
            seen = [len(run.stat("grad_norm", "conv1", rank=0)[0])]
            assert check_shard_file(shard) is False  # its writer holds it open
            wait_for(lambda: (seen.append(len(run.stat("grad_norm", "conv1", rank=0)[0])) or seen[-1]) >= seen[0] + 5,
                     what="the statistic to grow")
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    assert check_shard_file(shard) is True
    with tview.open_run(path) as run:
        steps, values = run.stat("grad_norm", "conv1", rank=0)
        assert list(steps) == list(range(40)) and values.shape == (40,)
