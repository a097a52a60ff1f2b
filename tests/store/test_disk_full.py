"""A full disk (a real 2 MiB tmpfs) and a run folder removed mid-run: training gets a StoreWriteError, never a
crash, and what was written stays readable. Each training runs in its own process (a segfault is seen as one)."""

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import PY, REPO, python_env

pytestmark = pytest.mark.slow  # every test here starts a process (or uses a fixture that does)

SCRIPT = os.path.join(REPO, "tests", "store", "disk_full_script.py")
READER = os.path.join(REPO, "tests", "store", "read_script.py")


def _mount_tmpfs(path, size="2m"):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the disk-full tests need a small real file system")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): "
                    "the disk-full tests need a small real file system")


def _umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _run(args, timeout=180) -> tuple[int, dict, str]:
    proc = subprocess.run([PY] + args, capture_output=True, text=True, timeout=timeout, env=python_env(), cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    report = json.loads(lines[-1][len("REPORT "):]) if lines else {}
    return proc.returncode, report, proc.stderr[-3000:]


def _how(rc: int) -> str:
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A training that ran until its 2 MiB tmpfs was full: (exit status, its report, stderr, run folder)."""
    mnt = tmp_path_factory.mktemp("full") / "tmpfs"
    _mount_tmpfs(mnt)
    run_dir = str(mnt / "run")
    try:
        rc, report, err = _run([SCRIPT, "fill", run_dir])
        read_rc, read, read_err = _run([READER, run_dir], timeout=60)
        yield {"rc": rc, "report": report, "stderr": err, "read": read, "read_rc": read_rc, "read_err": read_err}
    finally:
        _umount(mnt)


def test_full_disk_raises_store_write_error_at_step_or_close(filled):
    first = filled["report"].get("first_error")
    assert first is not None, f"no error at all on a full disk: {filled['report']} {filled['stderr']}"
    assert first["type"] == "StoreWriteError", first
    assert "rank-00000.h5" in first["msg"], first


def test_later_steps_keep_raising_or_warning_after_full_disk(filled):
    """The 250 steps after the first error: each raises StoreWriteError, or a warning about the stopped
    recording comes at least every 100 steps (training may go on unrecorded, but never silently)."""
    later = filled["report"].get("later", [])
    told = [i for i, e in enumerate(later) if e is not None and e["type"] in ("StoreWriteError", "warning")]
    assert len(later) == 250 and told, f"no error or warning in {len(later)} steps after the first failure"
    gaps = [b - a for a, b in zip([-1] + told, told + [len(later)])]
    assert max(gaps) <= 100, f"silent stretches of {max(gaps)} steps after the first failure (reports at {told[:10]})"


def test_training_process_exits_cleanly_after_full_disk(filled):
    assert filled["rc"] == 0, f"{_how(filled['rc'])}: {filled['stderr'][-1500:]}"


def test_shard_readable_up_to_last_complete_step_after_full_disk(filled):
    read, last_ok = filled["read"], filled["report"]["last_ok_step"]
    assert filled["read_rc"] == 0 and read, f"reader {_how(filled['read_rc'])}: {filled['read_err']}"
    assert read["errors"] == [], read["errors"]
    steps = read["steps"]
    assert steps and steps == list(range(len(steps))), steps  # 0, 1, 2, ...: every step, in order, none negative
    assert steps[-1] <= last_ok and read["last_step"] == steps[-1] and read["closed"] is False
    assert "last step -1" not in read["info"] and "loss:" in read["info"]


@pytest.fixture
def full_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    _mount_tmpfs(mnt, size="1m")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            for block in (65536, 1):  # fill it to the last byte
                try:
                    while True:
                        os.write(fd, b"\0" * block)
                except OSError:
                    pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        _umount(mnt)


def test_full_disk_at_recorder_is_a_tview_error_and_leaves_no_temporary_file(full_tmpfs):
    run_dir = full_tmpfs / "run"
    rc, report, err = _run([SCRIPT, "construct", str(run_dir)], timeout=120)
    assert rc == 0, f"{_how(rc)}: {err}"
    left = sorted(os.listdir(run_dir)) if run_dir.exists() else []
    error = report["error"]
    assert error is not None and error["tview"], f"Recorder() on a full disk gave {error}"
    assert str(run_dir) in error["msg"], error
    assert not [n for n in left if n.startswith(".run.tview")], f"temporary manifest left behind: {left}"


def test_run_folder_removed_mid_run_raises_store_write_error(tmp_path):
    rc, report, err = _run([SCRIPT, "rmdir", str(tmp_path / "run")], timeout=180)
    assert rc == 0, f"{_how(rc)}: {err}"
    raised = [e for e in report["errors"] + [report["flush"], report["close"]] if e is not None]
    assert raised and raised[0]["type"] == "StoreWriteError", report
