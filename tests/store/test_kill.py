"""A writer killed with a real SIGKILL leaves a shard readable up to its last flushed step; a follower opening a
shard while its writer creates it gets "not ready yet" or data, never a damaged-shard error."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import PY, REPO, python_env

pytestmark = pytest.mark.slow  # every test here starts a process (or uses a fixture that does)

WRITER = os.path.join(REPO, "tests", "store", "writer_script.py")
READER = os.path.join(REPO, "tests", "store", "read_script.py")
FOLLOWER = os.path.join(REPO, "tests", "store", "follow_script.py")
WIDE_WRITER = os.path.join(REPO, "tests", "store", "wide_writer_script.py")


def _report(proc_stdout: str) -> dict:
    lines = [ln for ln in proc_stdout.splitlines() if ln.startswith("REPORT ")]
    return json.loads(lines[-1][len("REPORT "):]) if lines else {}


def _read(run_dir: str, timeout: float = 60) -> dict:
    """Read the run in its own process, with a deadline (a hang fails the test, it does not stall it)."""
    try:
        proc = subprocess.run([PY, READER, run_dir], capture_output=True, text=True, timeout=timeout, env=python_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {run_dir} after the kill hung for {timeout:.0f} s")
    assert proc.returncode == 0, f"reader exit status {proc.returncode}: {proc.stderr[-2000:]}"
    return _report(proc.stdout)


def _start_writer(run_dir: str, steps: int = 2000, delay: float = 0.02) -> subprocess.Popen:
    return subprocess.Popen([PY, WRITER, run_dir, str(steps), str(delay)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=python_env())


def _kill_after_step(proc: subprocess.Popen, step: int, then: float, run_dir: str | None = None) -> int:
    """SIGKILL the writer `then` seconds after it printed STEP `step` (with `run_dir`: after its rank summary, which
    the writer rewrites after each flush of the shard, says that step is flushed); returns the last step it printed."""
    last = -1
    for line in proc.stdout:
        if line.startswith("STEP "):
            last = int(line.split()[1])
            if last >= step:
                break
    if run_dir is not None:
        _wait_flushed(run_dir, step)
    time.sleep(then)
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.communicate(timeout=30)[0]
    steps = [int(ln.split()[1]) for ln in rest.splitlines() if ln.startswith("STEP ")]
    assert proc.returncode == -signal.SIGKILL
    return max([last] + steps)


def _wait_flushed(run_dir: str, step: int, timeout: float = 60.0) -> None:
    """Until rank 0's summary says `step` was flushed (a busy machine may take longer than flush_seconds)."""
    path = os.path.join(run_dir, "rank-00000.summary.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if (json.load(f).get("last_step") or -1) >= step:
                    return
        except (OSError, ValueError):
            pass  # not written yet, or replaced while read
        time.sleep(0.02)
    pytest.fail(f"the writer did not flush step {step} within {timeout:.0f} s")


def test_sigkilled_writer_leaves_shard_readable_up_to_last_flushed_step(tmp_path):
    run_dir = str(tmp_path / "run")
    printed = _kill_after_step(_start_writer(run_dir), step=30, then=0.0, run_dir=run_dir)  # step 30 is on disk
    read = _read(run_dir)
    assert read["errors"] == [], read["errors"]
    steps = read["steps"]
    assert steps == list(range(len(steps))) and 30 <= steps[-1] <= printed, (steps, printed)
    assert read["closed"] is False and read["last_step"] == steps[-1]


@pytest.mark.parametrize("step,then", [(0, 0.0), (3, 0.05), (12, 0.5)], ids=["step0-at-once", "step3-0.05s",
                                                                             "step12-0.5s"])
def test_sigkill_at_any_moment_leaves_a_readable_prefix_or_a_named_tview_error(tmp_path, step, then):
    run_dir = str(tmp_path / "run")
    printed = _kill_after_step(_start_writer(run_dir), step=step, then=then)
    read = _read(run_dir)
    foreign = [e for e in read["errors"] if not e["tview"]]
    assert not foreign, foreign
    unnamed = [e for e in read["errors"] if run_dir not in e["msg"]]
    assert not unnamed, unnamed
    if read.get("steps"):
        assert read["steps"] == list(range(len(read["steps"]))) and read["steps"][-1] <= printed


def _follow_once(run_dir: str) -> dict:
    """A follower trying to open the run from before its writer starts until it reads a step. The writer's
    model has 300 layers: creating its shard takes long enough for many tries to land inside it."""
    writer = subprocess.Popen([PY, WIDE_WRITER, run_dir, "150", "3"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=python_env())
    try:
        proc = subprocess.run([PY, FOLLOWER, run_dir, "40"], capture_output=True, text=True, timeout=90,
                              env=python_env())
    finally:
        writer.kill()
        writer.communicate(timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _report(proc.stdout)


def test_follower_of_a_shard_being_created_never_sees_it_as_damaged(tmp_path):
    """4 writers, each followed from before it starts (before issue 11's fix about every second one was
    seen as damaged: 'unable to lock file', 'no HDF5 signature; empty', 'truncated: 48 bytes on disk')."""
    seen = {}
    for i in range(4):
        report = _follow_once(str(tmp_path / f"run{i}"))
        for kind, n in report["counts"].items():
            seen[kind] = seen.get(kind, 0) + n
        assert "other" not in report["counts"], report["examples"]["other"]
        assert "corrupt" not in report["counts"], f"try {i}: {report['examples']['corrupt']} ({report['counts']})"
    assert seen.get("data") and seen.get("not-ready"), seen  # the tries did land before and after the creation
