"""The run store for real: round trip, a live SWMR reader beside a writer process, SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import torch

import tview
from tests.conftest import PY, TinyCNN, make_data, python_env, train
from tview.store import schema
from tview.store.h5open import check_shard_file

WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "writer_script.py")


def test_round_trip(small_run):
    path, model, x = small_run
    run = tview.open_run(path)
    assert run.ranks == [0] and run.world_size == 1
    assert run.layers == ["conv1", "bn1", "relu", "conv2", "fc"]
    assert list(run.steps(rank=0)) == [0, 2, 4, 6, 8, 10]
    assert list(run.snapshot_steps()) == [0, 4, 8]
    step, w = run.filters("conv2")
    assert step == 8  # the last snapshot; the model has trained 12 steps since, so compare shapes only
    assert w.shape == tuple(model.conv2.weight.shape)
    assert run.filters("conv2", step=5)[0] == 4  # latest snapshot at or before step 5
    with pytest.raises(KeyError, match="no filters recorded for layer 'fc'"):
        run.filters("fc")
    step, fmaps = run.feature_maps("conv1", step=8)
    assert fmaps.shape == (4, 4, 8, 8)
    np.testing.assert_array_equal(run.probe_inputs(), x[:4].numpy())
    with pytest.raises(KeyError, match="no layer 'nope'"):
        run.stat("grad_norm", "nope")
    with pytest.raises(KeyError, match="no scalar 'nope'"):
        run.scalar("nope")
    assert run.rank_status()[0]["closed"] is True


def test_snapshots_equal_the_model_at_that_step(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = make_data()
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, snapshot_every=3, probe_batch=x[:5],
                         probe_layers=["conv1", "relu"])
    opt = train(model, rec, 4, x, y)  # snapshot steps 0 and 3: step 3 is the last one trained
    rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    step, w = run.filters("conv1")
    assert step == 3
    np.testing.assert_array_equal(w, model.conv1.weight.detach().numpy())
    model.eval()
    with torch.no_grad():
        ref = model.conv1(x[:5])
    np.testing.assert_allclose(run.feature_maps("conv1")[1], ref.numpy(), rtol=1e-6)
    assert opt.param_groups[0]["lr"] == 0.1


def test_probe_forward_does_not_touch_batchnorm_statistics(tmp_path, tiny):
    x, y = make_data()
    rec = tview.Recorder(tiny, str(tmp_path / "r"), every=1, snapshot_every=1, probe_batch=x[:4])
    before = tiny.bn1.running_mean.clone()
    rec.probe.run()  # the probe batch's forward pass, as a detail step runs it
    torch.testing.assert_close(tiny.bn1.running_mean, before)
    assert tiny.training and tiny.bn1.training
    rec.close()


def test_store_is_plain_hdf5_v110(small_run):
    path, _, _ = small_run
    with h5py.File(os.path.join(path, "rank-00000.h5"), "r", swmr=True) as f:
        assert f.attrs["tview_schema_version"] == schema.SCHEMA_VERSION
        d = f["probes/grad/grad_norm"]
        assert d.shape == (6, 5) and f["probes/grad/measured"].shape == (6, 5)
        assert d.chunks is not None and d.maxshape[0] is None and d.fletcher32  # checksummed chunks
        assert f.id.get_create_plist().get_version()[0] == 3  # the superblock SWMR needs, read by HDF5 1.10
    manifest = json.load(open(os.path.join(path, "run.tview")))
    assert manifest["world_size"] == 1 and manifest["tview_schema_version"] == schema.SCHEMA_VERSION


def start_writer(run_dir, steps, delay, *extra):
    return subprocess.Popen([PY, WRITER, run_dir, str(steps), str(delay), *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def readable_steps(path):
    try:
        run = tview.open_run(path)
    except tview.TviewError:
        return None
    try:
        return len(run.steps()) if run.ranks else None
    finally:
        run.close()


@pytest.mark.slow
def test_reader_follows_a_live_writer_then_sigkill_keeps_every_flushed_step(tmp_path):
    path = str(tmp_path / "live")
    proc = start_writer(path, 100000, 0.02)
    try:
        first = wait_for(lambda: readable_steps(path), what="first flushed steps")
        run = tview.open_run(path)  # one reader kept open while the writer goes on
        seen = [len(run.steps())]
        wait_for(lambda: (seen.append(len(run.steps())) or seen[-1]) >= first + 20, what="steps to grow")
        assert seen[-1] > seen[0]
        steps, loss = run.scalar("loss")
        assert len(steps) == len(loss) and np.all(np.diff(steps) == 1)
        assert run.rank_status()[0]["closed"] is False
        before_kill = len(run.steps())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    run.close()
    assert check_shard_file(os.path.join(path, "rank-00000.h5")) is False  # never taken as closed: always refreshed
    after = tview.open_run(path)
    steps = after.steps()
    assert len(steps) >= before_kill  # everything a reader saw before the kill is still there
    assert list(steps) == list(range(len(steps)))
    assert after.stat("grad_norm", "conv1")[1].shape == (len(after.stat("grad_norm", "conv1")[0]),)
    assert after.rank_status()[0]["closed"] is False
    assert after.stopped_ranks() == {}  # one rank: nobody is behind anybody


def test_flush_makes_every_recorded_step_visible_before_close(tmp_path, tiny):
    x, y = make_data()
    rec = tview.Recorder(tiny, str(tmp_path / "r"), every=1)
    train(tiny, rec, 5, x, y)
    rec.flush()  # the writer would otherwise wait up to a second for more steps
    run = tview.open_run(str(tmp_path / "r"))
    assert list(run.steps()) == [0, 1, 2, 3, 4]
    assert run.rank_status()[0]["closed"] is False
    train(tiny, rec, 2, x, y)
    rec.flush()
    assert list(run.steps()) == [0, 1, 2, 3, 4, 5, 6]  # the open reader follows
    run.close()
    rec.close()
    rec.flush()  # after close: nothing left to do, no error


@pytest.mark.slow
def test_a_writer_that_falls_behind_drops_counts_and_reports_never_blocks(tmp_path, tiny):
    x, y = make_data()
    rec = tview.Recorder(tiny, str(tmp_path / "r"), every=1, queue_size=2)
    finalize = rec._writer.finalize
    rec._writer.finalize = lambda item: (time.sleep(0.05), finalize(item))[1]  # a slow disk, say
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="rank-00000.h5 is behind; 1 recorded step"):
        train(tiny, rec, 40, x, y)
    assert time.perf_counter() - t0 < 40 * 0.05  # training never waited for the writer
    dropped = rec.dropped
    rec.close()
    assert dropped > 0
    run = tview.open_run(str(tmp_path / "r"))
    assert run.rank_status()[0]["dropped"] == dropped  # in the shard, for every reader
    assert len(run.steps()) + dropped == 40  # nothing else lost
    info = subprocess.run([PY, "-m", "tview.cli", "info", str(tmp_path / "r")], capture_output=True, text=True,
                          env=python_env()).stdout
    rank0 = next(line.split() for line in info.splitlines() if line.split()[:1] == ["0"])
    assert rank0[1:5] == [str(40 - dropped), str(run.steps()[-1]), "closed", str(dropped)], info


@pytest.mark.slow
def test_a_full_disk_surfaces_on_step_or_close_and_never_hangs(tmp_path):
    path = str(tmp_path / "full")
    proc = start_writer(path, 400, 0.0, 200 * 1024)  # the shard may not grow past 200 KiB
    out, err = proc.communicate(timeout=120)  # never hangs
    lines = out.splitlines()
    errors = [line for line in lines if line.startswith("WRITE_ERROR")]
    assert errors, (out[-2000:], err[-2000:])
    assert "rank-00000.h5" in errors[0] and "DONE" not in lines  # names the file; raised in step()
    # Known defect (see the issue note): HDF5 may crash at interpreter teardown after a failed write,
    # so the exit status is not asserted here.
    # Where the write failed decides what is on disk: either the shard is consistent up to its last
    # flush (then every step before it reads back), or it was cut short and is reported as
    # truncated, by name, while the run still opens without it.
    try:
        run = tview.open_run(path)
    except tview.CorruptShardError as exc:
        assert "rank-00000.h5: truncated" in str(exc)
        assert "truncated" in tview.open_run(path, skip_bad_shards=True).problems[0]
    else:
        steps = run.steps()
        assert len(steps) > 0 and list(steps) == list(range(len(steps)))
        assert len(run.scalar("loss")[1]) == len(steps)


def test_not_a_run_wrong_path_and_file(tmp_path):
    with pytest.raises(tview.NotARunError, match="no such folder"):
        tview.open_run(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(tview.NotARunError, match="not a tview run"):
        tview.open_run(str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(tview.NotARunError, match="not a folder"):
        tview.open_run(str(tmp_path / "file.txt"))


def test_corrupt_and_truncated_shards_are_named(small_run, tmp_path):
    path, _, _ = small_run
    shard = os.path.join(path, "rank-00000.h5")
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[: len(data) // 3])  # truncated
    with pytest.raises(tview.CorruptShardError, match="rank-00000.h5"):
        tview.open_run(path)
    with open(shard, "wb") as f:
        f.write(b"not hdf5 at all" * 100)
    with pytest.raises(tview.CorruptShardError, match="rank-00000.h5.*not a readable HDF5"):
        tview.open_run(path)
    run = tview.open_run(path, skip_bad_shards=True)  # the rest still opens; the problem is listed
    assert run.ranks == [] and "rank-00000.h5" in run.problems[0]


def test_newer_schema_is_refused_with_the_file_named(small_run):
    path, _, _ = small_run
    mpath = os.path.join(path, "run.tview")
    manifest = json.load(open(mpath))
    manifest["tview_schema_version"] = schema.SCHEMA_VERSION + 1
    json.dump(manifest, open(mpath, "w"))
    with pytest.raises(tview.SchemaVersionError, match="run.tview.*newer"):
        tview.open_run(path)
    manifest["tview_schema_version"] = schema.SCHEMA_VERSION
    json.dump(manifest, open(mpath, "w"))
    with h5py.File(os.path.join(path, "rank-00000.h5"), "r+") as f:
        f.attrs["tview_schema_version"] = schema.SCHEMA_VERSION + 1
    with pytest.raises(tview.SchemaVersionError, match="rank-00000.h5.*newer"):
        tview.open_run(path)


def test_reusing_a_run_folder_needs_resume_or_overwrite(small_run):
    path, _, _ = small_run
    x, y = make_data()
    with pytest.raises(tview.RunExistsError, match="rank-00000.h5 already holds a recorded run"):
        tview.Recorder(TinyCNN(), path, every=2)
    assert len(tview.open_run(path).steps()) == 6  # nothing lost
    model = TinyCNN()
    rec = tview.Recorder(model, path, every=2, mode="resume", preset="full")
    assert rec.current_step == 12  # the training step after the 12 taken (last recorded: 10)
    train(model, rec, 4, x, y)
    rec.close()
    assert list(tview.open_run(path).steps()) == [0, 2, 4, 6, 8, 10, 12, 14]
    rec = tview.Recorder(TinyCNN(), path, every=1, mode="overwrite")
    train(rec.model, rec, 2, x, y)
    rec.close()
    assert list(tview.open_run(path).steps()) == [0, 1]


def test_a_dead_rank_still_lets_the_run_open(tmp_path):
    """Rank 1 of 3 stopped early (killed: not closed), rank 2 never wrote: the run opens and says so."""
    path = str(tmp_path / "r")
    x, y = make_data()
    for rank, steps in ((0, 10), (1, 4)):
        torch.manual_seed(0)
        model = TinyCNN()
        rec = tview.Recorder(model, path, every=1, rank=rank, world_size=3)
        train(model, rec, steps, x, y)
        if rank == 0:
            rec.close()
        else:  # what a kill leaves: flushed data, no clean close
            rec._writer.close()
            with h5py.File(os.path.join(path, "rank-00001.h5"), "r+") as f:
                f["status/closed"][0] = 0
    run = tview.open_run(path)
    assert run.ranks == [0, 1] and run.missing_ranks == [2]
    assert run.stopped_ranks() == {1: 3, 2: None}
    assert "no shard yet" in run.problems[2]
    with pytest.raises(tview.TviewError, match="rank 2 cannot be read"):
        run.steps(rank=2)


def test_bad_recorder_arguments_are_named(tmp_path, tiny):
    with pytest.raises(tview.ConfigError, match="unknown preset 'fast'"):
        tview.Recorder(tiny, str(tmp_path / "a"), preset="fast")
    with pytest.raises(tview.ConfigError, match="every: n must be a positive integer"):
        tview.Recorder(tiny, str(tmp_path / "b"), every=0)
    with pytest.raises(tview.ConfigError, match="probe_batch of shape \\(2, 3, 8, 8\\) fails"):
        tview.Recorder(tiny, str(tmp_path / "c"), probe_batch=torch.zeros(2, 3, 8, 8))
    with pytest.raises(tview.ConfigError, match="probe_layers \\['conv9'\\]"):
        tview.Recorder(tiny, str(tmp_path / "d"), probe_batch=torch.zeros(2, 1, 8, 8), probe_layers=["conv9"])
    with pytest.raises(tview.ConfigError, match="flush_seconds must be a positive number of seconds up to 3600, got 0"):
        tview.Recorder(tiny, str(tmp_path / "e"), flush_seconds=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(tview.ConfigError, match="exists and is not a folder"):
        tview.Recorder(tiny, str(tmp_path / "file"))


@pytest.mark.slow
def test_store_and_reader_work_without_torch(small_run):
    path, _, _ = small_run
    code = ("import sys; sys.modules['torch'] = None\n"
            "import tview, tview.store\n"
            f"run = tview.open_run({path!r}); print(len(run.steps()), run.stat('grad_norm', 'conv1')[1].shape)\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=python_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6", "(6,)"]


def test_synthetic_runs_read_back_like_recorded_ones(tmp_path):
    from tview.store.synthetic import write_synthetic_run
    run = tview.open_run(write_synthetic_run(str(tmp_path / "syn"), 250, ranks=3, layers=4, detail_every=100,
                                             channel_tail=50))
    assert run.ranks == [0, 1, 2] and len(run.layers) == 4
    for rank in run.ranks:
        assert list(run.steps(rank)) == list(range(250))
        assert len(run.scalar("loss", rank)[1]) == 250 and np.isfinite(run.scalar("loss", rank)[1]).all()
        assert run.stat_matrix("grad_norm", rank)[1].shape == (250, 4)
        assert list(run.histogram("grad", 0, rank)[0]) == [0, 100, 200]
        assert run.rank_status()[rank]["closed"] and run.rank_status()[rank]["last_step"] == 249
    steps, zf = run.stat("act_channel_zero_frac", run.layers[1])
    assert list(steps) == list(range(200, 250)) and np.isfinite(zf).all()  # measured rows only


@pytest.mark.slow
def test_a_schema_1_run_is_refused_with_how_to_convert_it_then_upgrades(tmp_path):
    """tests/data/v1_run: 12 steps of TinyCNN recorded by tview 0.1 (store schema 1, activations preset),
    a NaN input pixel from step 9 on (repacked smaller with gzip, otherwise as written)."""
    import shutil

    from tests.conftest import REPO
    path = str(tmp_path / "v1")
    shutil.copytree(os.path.join(REPO, "tests", "data", "v1_run"), path)
    with pytest.raises(tview.SchemaVersionError, match="schema 1.*tview upgrade RUN"):
        tview.open_run(path)
    out = subprocess.run([PY, "-m", "tview.cli", "upgrade", path], capture_output=True, text=True, env=python_env())
    assert out.returncode == 0 and "12 recorded steps converted" in out.stdout, out.stderr
    assert os.path.exists(os.path.join(path, "rank-00000.v1.h5"))  # the old shard is kept
    run = tview.open_run(path)
    assert list(run.steps()) == list(range(12))
    steps, nan = run.stat("act_nan", "conv1")
    assert list(steps) == list(range(12)) and nan[:9].sum() == 0 and nan[9] == 36  # 3x3 kernel x 4 channels
    assert run.first_nonfinite(0)["tensors"]["activation"]["conv1"] == 9
    steps, loss = run.scalar("loss")
    assert list(steps) == list(range(12)) and np.isfinite(loss[:9]).all() and np.isnan(loss[9:]).all()
    assert len(run.stat("grad_norm", "relu")[0]) == 0  # a v1 NaN with nothing measured beside it: absent
    assert run.filters("conv1")[0] == 8 and "not recorded" in run.stat_info("act_mean")["note"]
    out = subprocess.run([PY, "-m", "tview.cli", "upgrade", path], capture_output=True, text=True, env=python_env())
    assert out.returncode == 0 and "0 shard(s) converted" in out.stdout  # a second time: nothing to do


def test_settings_and_scalars_that_cannot_work_are_refused_by_name(tmp_path, tiny):
    """Each a ConfigError at Recorder() or step() naming the value, where it used to be stored wrong,
    cut, or raise a foreign exception from the writer thread."""
    bad_settings = [({"flush_seconds": float("inf")}, "flush_seconds must be a positive number"),
                    ({"every": ["x"]}, "at_steps: steps must be non-negative integers"),
                    ({"trajectory_dims": -2}, "trajectory_dims must be an integer from 1 to 64"),
                    ({"queue_size": True}, "queue_size must be a positive integer")]
    for i, (kwargs, match) in enumerate(bad_settings):
        with pytest.raises(tview.ConfigError, match=match):
            tview.Recorder(tiny, str(tmp_path / f"s{i}"), **kwargs)
    x, y = make_data()
    rec = tview.Recorder(tiny, str(tmp_path / "r"), every=1)
    bad_steps = [({"loss": torch.ones(1000)}, "a tensor of 1000"), ({"z": 1 + 2j}, "is complex"),
                 ({"z": torch.ones(1, dtype=torch.complex64)}, "complex"), ({"batch_size": "big"}, "batch_size"),
                 ({"é" * 40: 1.0}, "longer than 64 UTF-8 bytes"), ({"z": "abc"}, "is not a number")]
    for kwargs, match in bad_steps:
        tiny.zero_grad()
        torch.nn.functional.cross_entropy(tiny(x), y).backward()
        with pytest.raises(tview.ConfigError, match=match):
            rec.step(**kwargs)
    with pytest.raises(tview.ConfigError, match="would exceed the 64 scalars"):
        rec.step(**{f"s{i}": float(i) for i in range(64)})
    rec.close()
    assert oct(os.stat(tmp_path / "r" / "run.tview").st_mode & 0o777) != "0o600"  # readable by a dashboard's user
