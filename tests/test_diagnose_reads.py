"""Diagnosis reads each rank once and judges many series at once: the detectors over many series equal each series
judged alone (and their definitions), the reads kept equal the Run's, and the findings equal a diagnosis that
reads every series from the shards as each check asks."""

import h5py
import numpy as np
import pytest

from tests.test_diagnose_summaries import DIVERGES, SLOW, _write_run
from tview.diagnose import causes, detect, diagnose, every_finding
from tview.diagnose.checks import CHECKS, Context
from tview.diagnose.reads import Reads
from tview.store import parallel, pool, shard_reader
from tview.store.reader import open_run
from tview.store.synthetic import write_synthetic_run


def _series(rng, n: int) -> np.ndarray:
    """A positive noisy series with, now and then, a jump up or down that stays, NaN/Inf, zeros or a sign flip."""
    v = np.exp(rng.normal(size=n) * rng.choice([0.1, 0.5, 2.0]))
    if n and rng.random() < 0.5:
        v[rng.integers(0, n):] *= rng.choice([1e-6, 1e-3, 1e3, 1e5])
    if n and rng.random() < 0.3:
        v[rng.integers(0, n, size=3)] = rng.choice([np.nan, np.inf, 0.0])
    return -v if rng.random() < 0.05 else v


def _jump_by_definition(v, factor, history=20, least=5, sustain=2, up=True, level="median"):
    """jump_onset's docstring, one index at a time."""
    idx = np.flatnonzero(np.isfinite(v))
    f = v[idx]
    for i in range(least, len(f)) if len(f) > least else ():
        before = f[max(0, i - history):i]
        base = np.max(before) if level == "max" else np.median(before)
        ahead = f[i:i + sustain]
        if base > 0 and all((a > factor * base) if up else (a < base / factor) for a in ahead):
            return int(idx[i])
    return None


def _drift_by_definition(v, factor, share=0.1, least=3, width=5, up=True):
    """drift_onset's docstring, one index at a time."""
    idx = np.flatnonzero(np.isfinite(v))
    f = v[idx]
    if len(f) < 2 * least:
        return None
    early = np.median(f[:max(least, int(round(share * len(f))))])
    for i in range(len(f)) if early > 0 else ():
        smooth = np.median(f[max(0, i - width + 1):i + 1])
        if (smooth > factor * early) if up else (smooth < early / factor):
            return int(idx[i])
    return None


JUMPS = [dict(factor=10, level="max"), dict(factor=1e3, sustain=5, up=False), dict(factor=10, sustain=1),
         dict(factor=3, history=7)]
DRIFTS = [dict(factor=1e3), dict(factor=1e3, up=False), dict(factor=2, width=8)]


def test_onsets_of_many_series_at_once_equal_each_judged_alone_and_the_definition():
    rng = np.random.default_rng(0)
    for _ in range(80):
        n = int(rng.integers(0, 90))
        rows = np.stack([_series(rng, n) for _ in range(4)])
        for kw in JUMPS:
            alone = [detect.jump_onset(row, **kw) for row in rows]
            assert detect.jump_onsets(rows, **kw) == alone == [_jump_by_definition(row, **kw) for row in rows]
        for kw in DRIFTS:
            alone = [detect.drift_onset(row, **kw) for row in rows]
            assert detect.drift_onsets(rows, **kw) == alone == [_drift_by_definition(row, **kw) for row in rows]


def test_window_reduce_and_the_median_of_the_others_equal_plain_numpy():
    rng = np.random.default_rng(1)
    for width in range(1, 25):
        x = rng.normal(size=(3, 40))
        x[x > 1.2] = np.nan
        for fn in (np.fmax, np.fmin):
            windows = np.lib.stride_tricks.sliding_window_view(x, width, axis=1)
            np.testing.assert_array_equal(detect.window_reduce(fn, x, width), fn.reduce(windows, axis=2))
    for _ in range(300):
        m = np.round(rng.normal(size=(int(rng.integers(2, 9)), int(rng.integers(1, 25)))), int(rng.integers(0, 3)))
        m[rng.random(m.shape) < 0.1] = np.nan
        k, start = int(rng.integers(0, len(m))), int(rng.integers(0, m.shape[1]))
        rest = np.delete(m, k, axis=0)[:, start:]
        rest = rest[np.isfinite(rest)]
        got = detect.median_without(detect.finite_sorted(m[:, start:]), m[k, start:])
        assert got == np.median(rest) if len(rest) else np.isnan(got)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """A synthetic run of 12 ranks x 80 steps: rank 5's grad_norm of layer 2 x1e4 from step 50, channels 3 and 7
    of layer 1 dead on every rank over the last 20 steps (per-channel values on the last 40), channel 2 of layer
    3 dead on rank 9 alone."""
    path = write_synthetic_run(str(tmp_path_factory.mktemp("faulty") / "run"), 80, ranks=12, layers=4,
                               channel_tail=40)
    for rank in range(12):
        with h5py.File(f"{path}/rank-{rank:05d}.h5", "r+") as f:
            zero = f["probes/act_channel/act_channel_zero_frac"]
            zero["block0.relu"][-20:, [3, 7]] = 1.0
            if rank == 9:
                zero["block1.relu"][-20:, 2] = 1.0
            if rank == 5:
                f["probes/grad/grad_norm"][50:, 2] *= 1e4
    return path


def _every_series_read_from_the_shards(run, max_points=None) -> list[dict]:
    """The checks over the Run itself (each series read from the shards when a check asks for it)."""
    ctx = Context(run, max_points, run.rank_summaries())
    for check in CHECKS:
        for f in check.check(ctx):
            ctx.found.setdefault(f.kind, []).append(f)
    return [f.to_dict() for f in causes.fold([f for g in ctx.found.values() for f in g], causes.record_stride(run))]


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: forks
def test_findings_read_once_equal_those_read_as_each_check_asks(faulty_run, tmp_path, monkeypatch, processes):
    monkeypatch.setattr(parallel, "MAX_PROCESSES", processes)
    monkeypatch.setattr(parallel, "PARALLEL_FROM", 4)
    for path in (faulty_run, _write_run(str(tmp_path / "ranks"), nudge=(3, 77, 1))):
        with open_run(path) as run:
            found = [f.to_dict() for f in diagnose(run)]
            assert found == _every_series_read_from_the_shards(run)
        assert found
    kinds = {(f["kind"], f["rank"]) for f in found}
    assert {("slow_rank", SLOW), ("rank_diverges", DIVERGES), ("replicas_differ", 3)} <= kinds
    with open_run(faulty_run) as run:
        kinds = {(f.kind, f.rank, f.layer) for f in every_finding(diagnose(run))}
        thinned = [f.to_dict() for f in diagnose(run, max_points=30)]  # every 3rd step read
        assert thinned == _every_series_read_from_the_shards(run, 30) and thinned
    assert {("exploding_gradients", 5, "block1.conv"), ("dead_filters", None, "block0.relu"),
            ("dead_filters", 9, "block1.relu")} <= kinds


def test_the_reads_kept_are_the_runs_own_and_each_shard_is_opened_once(faulty_run, monkeypatch):
    monkeypatch.setattr(parallel, "MAX_PROCESSES", 1)
    monkeypatch.setattr(pool, "EAGER_SHARDS", 1)
    monkeypatch.setattr(pool, "OPEN_SHARDS", 3)
    opened = []
    real_init = shard_reader.ShardReader.__init__
    monkeypatch.setattr(shard_reader.ShardReader, "__init__",
                        lambda self, path, rank=None, *a: (opened.append(rank), real_init(self, path, rank, *a))[1])
    with open_run(faulty_run) as run:
        reads = Reads(run)
        reads.gather(run.ranks, ["grad_norm", "weight_sum"])
        assert sorted(opened) == sorted(set(opened)) and set(run.ranks) <= set(opened)  # one open each
        before = len(opened)
        for rank in run.ranks:
            for name in run.scalar_names(rank):
                for mine, theirs in zip(reads.scalar(name, rank), run.scalar(name, rank)):
                    np.testing.assert_array_equal(mine, theirs)
            for name in ("grad_norm", "weight_sum"):
                mine, theirs = reads.stat_matrix(name, rank), run.stat_matrix(name, rank)
                np.testing.assert_array_equal(mine[0], theirs[0])
                np.testing.assert_array_equal(np.ma.getmaskarray(mine[1]), np.ma.getmaskarray(theirs[1]))
                assert mine[1].dtype == theirs[1].dtype and np.ma.allequal(mine[1], theirs[1])
        with pytest.raises(KeyError, match="no scalar 'wait_time'"):
            reads.scalar("wait_time", 4)
        opened.clear()
        reads.scalar("loss", 4), reads.stat_matrix("grad_norm", 4)
        assert opened == []  # kept: no shard opened again
        assert len(run.ranks) == 12 and before >= 12
        summaries = run.rank_summaries()  # from the shards: written before the faults were
        opened.clear()
        diagnose(run, rank_summaries=summaries)
    assert len(opened) <= len(run.ranks) + 3, opened  # one pass over the ranks (the first one's read again after)


def test_the_mean_loss_over_ranks_is_each_steps_mean_to_the_bit(faulty_run, tmp_path):
    """Ranks on the same steps (one array) and ranks on different steps (a rank behind) give each step's np.mean of
    the ranks that have it, bit for bit."""
    import shutil

    from tview.diagnose.checks.common import mean_scalar
    behind = str(tmp_path / "behind")
    shutil.copytree(faulty_run, behind)
    with h5py.File(f"{behind}/rank-00004.h5", "r+") as f:  # rank 4 recorded 60 of the 80 steps
        for name in ("step", "values", "measured", "wall_time"):
            f["scalars"][name].resize(60, axis=0)
    for path in (faulty_run, behind):
        with open_run(path) as run:
            per_rank = [run.scalar("loss", r) for r in run.ranks]
            steps, mean = mean_scalar(run, "loss", None)
            expected = [np.mean([v[list(s).index(t)] for s, v in per_rank if t in s]) for t in steps.tolist()]
            np.testing.assert_array_equal(steps, sorted({t for s, _ in per_rank for t in s.tolist()}))
            assert mean.tobytes() == np.asarray(expected).tobytes()
