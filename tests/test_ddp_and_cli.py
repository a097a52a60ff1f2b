"""A real 2-process gloo DDP run (the demo, shortened) and the command line."""

import os
import subprocess

import numpy as np
import pytest

import tview
from tests.conftest import PY, REPO, python_env


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from tview.demo import run_demo
    path = str(tmp_path_factory.mktemp("ddp") / "demo")
    run_demo(path, ranks=2, steps=24, every=2, snapshot_every=10, batch=16)
    return path


def test_local_grad_norm_is_each_ranks_own_gradient_before_the_all_reduce(tmp_path):
    """Against plain torch: each rank recomputes its gradient on its batch with a non-DDP copy."""
    out = str(tmp_path / "ddp")
    proc = subprocess.run([PY, os.path.join(REPO, "tests", "ddp_local_grads.py"), out], capture_output=True,
                          text=True, env=python_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tview.open_run(out)
    assert run.ranks == [0, 1]
    for rank in (0, 1):
        ref = np.load(os.path.join(out, f"reference-{rank}.npz"))
        for layer in ("conv1", "bn1", "conv2", "fc"):
            steps, local = run.stat("local_grad_norm", layer, rank=rank)
            assert list(steps) == [0, 1, 2, 3]
            np.testing.assert_allclose(local, [ref[f"{layer}/{s}"] for s in steps], rtol=1e-4)
    _, l0 = run.stat("local_grad_norm", "fc", rank=0)
    _, l1 = run.stat("local_grad_norm", "fc", rank=1)
    assert not np.allclose(l0, l1)
    for rank in (0, 1):  # each rank's own work, without the all-reduce wait that step_time includes
        steps, busy = run.scalar("busy_time", rank)
        _, step_time = run.scalar("step_time", rank)
        assert len(steps) == 4 and np.all(busy > 0) and np.all(busy <= step_time)


def test_every_rank_writes_its_own_shard(ddp_run):
    run = tview.open_run(ddp_run)
    assert run.ranks == [0, 1] and run.world_size == 2 and run.missing_ranks == []
    for rank in (0, 1):
        assert list(run.steps(rank=rank)) == list(range(0, 24, 2))
        assert run.rank_status()[rank]["closed"]
    assert sorted(os.listdir(ddp_run)) == ["rank-00000.h5", "rank-00000.init.npz", "rank-00000.resume.json",
                                          "rank-00000.summary.json", "rank-00001.h5", "rank-00001.init.npz",
                                          "rank-00001.resume.json", "rank-00001.summary.json", "run.tview"]


def test_ddp_gradients_agree_after_all_reduce_and_local_norms_tell_ranks_apart(ddp_run):
    run = tview.open_run(ddp_run)
    for layer in ("conv1", "fc1", "fc3"):
        _, g0 = run.stat("grad_norm", layer, rank=0)
        _, g1 = run.stat("grad_norm", layer, rank=1)
        np.testing.assert_allclose(g0, g1, rtol=1e-5)  # all-reduced: the same on both ranks
        _, l0 = run.stat("local_grad_norm", layer, rank=0)
        _, l1 = run.stat("local_grad_norm", layer, rank=1)
        assert not np.allclose(l0, l1)  # each rank's own batch
        # the all-reduced gradient is the mean of the local ones: |mean| <= mean of |local|
        assert np.all(g0 <= (l0 + l1) / 2 * (1 + 1e-5))
    _, loss0 = run.scalar("loss", rank=0)
    _, loss1 = run.scalar("loss", rank=1)
    assert not np.allclose(loss0, loss1)
    assert run.scalar("examples", rank=1)[1][0] == 16


def test_cli_info_summarizes_a_run(ddp_run):
    out = subprocess.run([PY, "-m", "tview.cli", "info", ddp_run], capture_output=True, text=True,
                         env=python_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    for text in ("ranks    2 expected, 2 readable", "conv1", "Conv2d", "closed", "loss:", "non-finite values: none"):
        assert text in out.stdout


def test_cli_info_on_a_folder_that_is_not_a_run(tmp_path):
    out = subprocess.run([PY, "-m", "tview.cli", "info", str(tmp_path)], capture_output=True, text=True,
                         env=python_env(), timeout=120)
    assert out.returncode == 2
    assert f"{tmp_path}: not a tview run" in out.stderr


def test_cli_demo_single_rank(tmp_path):
    out = subprocess.run([PY, "-m", "tview.cli", "demo", "--out", str(tmp_path / "d"), "--ranks", "1",
                          "--steps", "6"], capture_output=True, text=True, env=python_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert "next:" in out.stdout and len(tview.open_run(str(tmp_path / "d")).steps()) == 3
    again = subprocess.run([PY, "-m", "tview.cli", "demo", "--out", str(tmp_path / "d"), "--ranks", "1",
                            "--steps", "6"], capture_output=True, text=True, env=python_env(), timeout=300)
    assert again.returncode != 0 and "already holds a recorded run" in again.stderr
