"""The gradient noise scale read rank by rank (running sums) gives the numbers of the former read of every rank."""

import os
import tracemalloc

import h5py
import numpy as np
import pytest

import tview
from tview.diagnose import noise
from tview.diagnose.checks.common import matrix
from tview.store import schema
from tview.store.synthetic import write_synthetic_run

RANKS, STEPS, LAYERS = 4, 300, 6


def full_read(run, max_points, smoothing=0.9):
    """The former noise_scale: every rank x step x layer's local_grad_norm held at once, reduced over the ranks."""
    local = {r: matrix(run, "local_grad_norm", r, max_points) for r in run.ranks}
    glob = matrix(run, "grad_norm", run.ranks[0], max_points)
    common = glob[0]
    for steps, _ in local.values():
        common = np.intersect1d(common, steps)
    loc = np.stack([m[np.isin(s, common)] for s, m in local.values()])
    glob = glob[1][np.isin(glob[0], common)]
    batch, world = noise._batch(run, max_points), len(run.ranks)
    params = [i for i in range(loc.shape[2]) if np.isfinite(glob[:, i]).any()]
    with np.errstate(invalid="ignore"):
        total_local = np.where(np.isfinite(loc[:, :, params]).any(axis=2), np.nansum(loc[:, :, params] ** 2, axis=2),
                               np.nan)
        total_global = np.where(np.isfinite(glob[:, params]).any(axis=1), np.nansum(glob[:, params] ** 2, axis=1),
                                np.nan)
    whole = noise.noise_scale_from_norms(total_local, total_global, batch, world, smoothing)
    layers = {run.layers[i]: noise.noise_scale_from_norms(loc[:, :, i] ** 2, glob[:, i] ** 2, batch, world, smoothing)
              for i in params}
    return common, whole, layers


def edit(path, rank, table, column, rows, value):
    with h5py.File(os.path.join(path, schema.shard_name(rank)), "r+") as f:
        f[schema.PROBES][table][column][rows] = value


def shorten(path, rank, table, rows):
    """One rank's table holds fewer rows than the others' (a rank behind): its steps differ at a point limit."""
    with h5py.File(os.path.join(path, schema.shard_name(rank)), "r+") as f:
        for dset in f[schema.PROBES][table].values():
            if isinstance(dset, h5py.Dataset):
                dset.resize(rows, axis=0)


@pytest.fixture(scope="module")
def uneven_run(tmp_path_factory):
    """A synthetic run edited the way real runs differ: a rank behind on local norms, a local norm NaN and one
    Inf, a step without any, a layer without gradient, a layer whose global norm is finite only where the rank
    behind has no row."""
    path = write_synthetic_run(str(tmp_path_factory.mktemp("noise") / "run"), STEPS, ranks=RANKS, layers=LAYERS)
    shorten(path, 2, "local_grad", 170)
    edit(path, 1, "local_grad", "local_grad_norm", (40, 2), np.nan)
    edit(path, 3, "local_grad", "local_grad_norm", (90, 0), np.inf)
    edit(path, 1, "local_grad", "local_grad_norm", (60, slice(None)), np.nan)  # no layer's norm on this step
    edit(path, 0, "grad", "grad_norm", (slice(None), 1), np.nan)
    edit(path, 0, "grad", "grad_norm", (slice(None, 200), 3), np.nan)
    with h5py.File(os.path.join(path, schema.shard_name(0)), "r+") as f:  # local norms an order apart: noise shows
        local = f[schema.PROBES]["local_grad"]["local_grad_norm"]
        local[:, 4] = local[:, 4] * 3
    return path


@pytest.mark.parametrize("max_points", [None, 2000, 120])
def test_the_read_rank_by_rank_gives_the_full_reads_numbers(uneven_run, max_points):
    run = tview.open_run(uneven_run)
    common, (values, why), layers = full_read(run, max_points)
    ns = noise.noise_scale(run, max_points)
    assert ns.reason is None and len(common) > 0
    np.testing.assert_array_equal(ns.steps, common)
    np.testing.assert_array_equal(ns.b_simple, values)
    assert ns.why == why and noise.WHY_NO_LOCAL in why  # the step without local norms is undefined, said why
    assert list(ns.layers) == list(layers) and not {run.layers[1], run.layers[3]} & set(ns.layers)
    for name, (v, w) in layers.items():
        np.testing.assert_array_equal(ns.layers[name].b_simple, v)
        assert ns.layers[name].why == w


def test_a_run_whose_local_norms_are_never_finite_says_so(tmp_path):
    path = write_synthetic_run(str(tmp_path / "run"), 50, ranks=2, layers=2)
    for rank in range(2):
        edit(path, rank, "local_grad", "local_grad_norm", slice(None), np.nan)
    ns = noise.noise_scale(tview.open_run(path))
    assert ns.reason.startswith("no local_grad_norm recorded") and len(ns.steps) == 0


def peak_of_noise_read(path) -> int:
    """Bytes allocated at most by noise_scale on an open run (its second read: shards already open)."""
    run = tview.open_run(path)
    noise.noise_scale(run)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        noise.noise_scale(run)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_the_reads_memory_does_not_grow_with_the_ranks(tmp_path):
    """A Ranks-page request of a 32-rank run holds about what one of a 4-rank run holds (one rank's rows at a time):
    less than a tenth more, and less than half of every rank x step x layer's norms held at once (the former read
    peaked at 7x the 4-rank figure)."""
    few, many = (peak_of_noise_read(write_synthetic_run(str(tmp_path / f"r{n}"), 300, ranks=n, layers=10,
                                                        channel_tail=10)) for n in (4, 32))
    assert many < 1.1 * few and many < 32 * 300 * 10 * 8 / 2, (few, many)
