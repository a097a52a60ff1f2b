"""Row reads: a statistic at one step for every layer or channel of a rank, read one row at a time, gives what
the whole columns give; run.stat over many ranks through one call gives what one call per rank gives."""

import h5py
import numpy as np
import pytest

import tview
from tview.errors import CorruptShardError
from tview.store.synthetic import write_synthetic_run


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """3 ranks, 60 steps, per-channel statistics on the last 25 steps, histograms every 7 steps."""
    return write_synthetic_run(str(tmp_path_factory.mktemp("rows") / "run"), 60, ranks=3, layers=6, channels=5,
                               detail_every=7, channel_tail=25)


def whole_column_at(run, name: str, layer: str, step, rank: int):
    """The latest measured (step, values) at or before `step` picked from the whole column (run.stat)."""
    try:
        steps, values = run.stat(name, layer, rank)
    except KeyError:
        return None
    end = len(steps) if step is None else int(np.searchsorted(steps, step, side="right"))
    return (int(steps[end - 1]), values[end - 1]) if end else None


def asked_steps(run, rank: int) -> list:
    steps = run.steps(rank)
    return [None, -1, int(steps[0]), int(steps[len(steps) // 2]), int(steps[-1]) + 5,
            int(steps[-min(10, len(steps))]) - 1]


@pytest.mark.parametrize("which", ["synthetic", "recorded"])
def test_channel_rows_at_give_the_whole_columns_row_for_every_layer_and_step(which, synthetic, small_run):
    path = synthetic if which == "synthetic" else small_run[0]
    with tview.open_run(path) as run:
        assert run.channel_stat_names()
        for rank in run.ranks:
            for name in run.channel_stat_names():
                for step in asked_steps(run, rank):
                    rows = run.channel_rows_at(name, step, rank)
                    for layer in run.layers:
                        want = whole_column_at(run, name, layer, step, rank)
                        got = run.channel_values_at(name, layer, step, rank)
                        assert (got is None) == (want is None) == (layer not in rows), (name, layer, step)
                        if want is not None:
                            assert got[0] == want[0] == rows[layer][0]
                            np.testing.assert_array_equal(got[1], want[1])
                            np.testing.assert_array_equal(rows[layer][1], want[1])


def test_layer_rows_at_give_the_latest_row_of_every_layer_statistic(synthetic):
    with tview.open_run(synthetic) as run:
        names = run.stat_names()
        for step in asked_steps(run, 1):
            rows = run.layer_rows_at(names, step, rank=1)
            assert sorted(rows) == sorted(names)
            for name in names:
                steps, matrix = run.stat_matrix(name, rank=1)
                end = len(steps) if step is None else int(np.searchsorted(steps, step, side="right"))
                at, values = rows[name]
                assert (at, values.mask.all()) == ((None, True) if end == 0 else (int(steps[end - 1]), False))
                if end:
                    np.testing.assert_array_equal(values, matrix[end - 1])
                    assert run.layer_values_at(name, step, rank=1)[0] == at


def test_a_row_read_of_a_measured_layer_whose_dataset_is_gone_names_the_shard(synthetic, tmp_path):
    import shutil
    path = str(tmp_path / "copy")
    shutil.copytree(synthetic, path)
    with h5py.File(f"{path}/rank-00000.h5", "a") as f:
        del f["probes/act_channel/act_channel_mean/block1.conv"]
    with tview.open_run(path) as run:
        with pytest.raises(CorruptShardError, match="act_channel_mean/block1.conv is missing"):
            run.channel_values_at("act_channel_mean", "block1.conv", None, 0)
        assert run.channel_values_at("act_channel_mean", "block1.conv", None, 1) is not None


def test_stat_over_ranks_in_one_call_equals_one_call_per_rank(synthetic):
    with tview.open_run(synthetic) as run:
        for name, layer in (("grad_norm", 2), ("act_channel_mean", "block2.conv")):
            together = run.stat(name, layer=layer, ranks=run.ranks)
            assert sorted(together) == run.ranks
            for rank in run.ranks:
                steps, values = run.stat(name, layer=layer, rank=rank)
                np.testing.assert_array_equal(together[rank][0], steps)
                np.testing.assert_array_equal(together[rank][1], values)
        assert list(run.stat("grad_norm", layer=0, ranks=[2])) == [2]



def _with_column_stored_as(synthetic: str, path: str, dtype):
    """A copy of the run whose rank 0 holds probes/grad/grad_norm in another dtype, same shape (an edited shard)."""
    import shutil
    shutil.copytree(synthetic, path)
    with h5py.File(f"{path}/rank-00000.h5", "a") as f:
        values = f["probes/grad/grad_norm"][:]
        del f["probes/grad/grad_norm"]
        f.create_dataset("probes/grad/grad_norm", data=values.astype(dtype) if dtype != "text" else
                         np.full(values.shape, b"x", dtype="S8"))


def plain_h5py_stat(path: str, rank: int, layer: int, name: str = "grad_norm"):
    """(steps, values) of a layer statistic read with plain h5py, as docs/store-format.md describes the shard."""
    with h5py.File(f"{path}/rank-{rank:05d}.h5", "r") as f:
        table = f["probes/grad"]
        keep = table["measured"][:, layer].astype(bool)
        return table["step"][:][keep], table[name][:, layer][keep]


def test_the_first_read_of_every_rank_gives_what_plain_h5py_reads(synthetic):
    with tview.open_run(synthetic) as run:
        for rank in run.ranks:
            steps, values = run.stat("grad_norm", layer=4, rank=rank)
            want_steps, want_values = plain_h5py_stat(synthetic, rank, 4)
            np.testing.assert_array_equal(steps, want_steps)
            np.testing.assert_array_equal(values, want_values)
            assert values.dtype == np.float32


def test_a_column_stored_in_another_number_type_is_read_as_declared(synthetic, tmp_path):
    path = str(tmp_path / "float64")
    _with_column_stored_as(synthetic, path, np.float64)
    with tview.open_run(path) as run:
        steps, values = run.stat("grad_norm", layer=1, rank=0)
    want_steps, want_values = plain_h5py_stat(synthetic, 0, 1)
    np.testing.assert_array_equal(steps, want_steps)
    np.testing.assert_array_equal(values, want_values)
    assert values.dtype == np.float32  # the declared dtype, as every other rank gives it


def test_a_column_stored_as_text_names_the_shard(synthetic, tmp_path):
    path = str(tmp_path / "text")
    _with_column_stored_as(synthetic, path, "text")
    with tview.open_run(path) as run:
        with pytest.raises(CorruptShardError, match="rank-00000.h5.*grad_norm cannot be read"):
            run.stat("grad_norm", layer=1, rank=0)
        assert len(run.stat("grad_norm", layer=1, rank=1)[0])

