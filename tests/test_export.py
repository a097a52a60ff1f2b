"""Numbers out: tview.store.frame.frame() and `tview export` against the Run API of a real recorded run."""

import sys

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

import tview  # noqa: E402
from tests.conftest import TinyCNN, make_data, train  # noqa: E402
from tview.cli import main  # noqa: E402
from tview.errors import TviewError  # noqa: E402
from tview.store.frame import frame  # noqa: E402


@pytest.fixture
def two_rank_run(tmp_path):
    """Two ranks of TinyCNN, each on its own data, recorded every 2 steps with the full preset."""
    path = str(tmp_path / "run")
    for rank in (0, 1):
        torch = pytest.importorskip("torch")
        torch.manual_seed(0)
        model = TinyCNN()
        x, y = make_data(seed=rank)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with tview.Recorder(model, path, every=2, preset="full", optimizer=opt, rank=rank, world_size=2) as rec:
            train(model, rec, 8, x, y, opt=opt)
    return path


def read_csv(path):
    """A CSV read back exactly (pandas 3 reads round-trip by default; older pandas must be asked)."""
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(path, **exact)


def rows(df, rank, statistic, layer=None):
    sel = (df["rank"] == rank) & (df["statistic"] == statistic)
    sel &= df["layer"].isna() if layer is None else (df["layer"] == layer)
    return df[sel]


def assert_same_as_run(df, run):
    """Every value of the frame is the Run API's, exactly, and nothing the Run API has is missing."""
    count = 0
    for rank in run.ranks:
        for name in run.scalar_names(rank):
            steps, values = run.scalar(name, rank)
            got = rows(df, rank, name)
            assert np.array_equal(got["step"], steps) and np.array_equal(got["value"], values, equal_nan=True), name
            count += len(steps)
        for name in run.stat_names() + run.channel_stat_names():
            for layer in run.layers:
                try:
                    steps, values = run.stat(name, layer, rank)
                except KeyError:
                    continue
                got = rows(df, rank, name, layer)
                values = np.asarray(values, dtype=np.float64)
                if values.ndim == 2:  # per channel: one row per (step, channel)
                    assert np.array_equal(got["channel"].to_numpy(int), np.tile(np.arange(values.shape[1]), len(steps)))
                    steps, values = np.repeat(steps, values.shape[1]), values.reshape(-1)
                else:
                    assert got["channel"].isna().all()
                assert np.array_equal(got["step"], steps), (name, layer)
                assert np.array_equal(got["value"], values, equal_nan=True), (name, layer)
                count += len(steps)
    assert count == len(df)


def test_frame_holds_exactly_what_the_run_api_returns(two_rank_run):
    run = tview.open_run(two_rank_run)
    df = frame(run)
    assert list(df.columns) == ["step", "rank", "layer", "statistic", "channel", "value"]
    assert sorted(df["rank"].unique()) == [0, 1]
    assert {"loss", "lr", "grad_norm", "act_channel_mean"} <= set(df["statistic"])
    assert_same_as_run(df, run)
    run.close()


def test_frame_selects_statistics_layers_ranks(two_rank_run):
    run = tview.open_run(two_rank_run)
    df = frame(run, stats=["grad_norm", "act_channel_mean"], layers=["conv1"], ranks=[1])
    assert set(df["statistic"]) == {"grad_norm", "act_channel_mean"}  # stats given: no scalars
    assert set(df["layer"]) == {"conv1"} and set(df["rank"]) == {1}
    steps, values = run.stat("grad_norm", "conv1", 1)
    assert np.array_equal(rows(df, 1, "grad_norm", "conv1")["value"], values)
    only_loss = frame(run, scalars=["loss"])
    assert set(only_loss["statistic"]) == {"loss"} and np.array_equal(rows(only_loss, 0, "loss")["value"],
                                                                        run.scalar("loss", 0)[1])
    assert len(frame(run, stats=["grad_norm"], max_points=2)) < len(frame(run, stats=["grad_norm"]))
    with pytest.raises(TviewError, match="'nope'"):
        frame(run, stats=["nope"])
    with pytest.raises(TviewError, match="'conv9'"):
        frame(run, layers=["conv9"])
    with pytest.raises(TviewError, match="readable rank 5"):
        frame(run, ranks=[5])
    run.close()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_export_writes_a_file_that_reads_back(two_rank_run, tmp_path, capsys, suffix):
    out = str(tmp_path / f"stats{suffix}")
    assert main(["export", two_rank_run, "--out", out]) == 0
    captured = capsys.readouterr()
    assert "100%" in captured.err and f"to {out}" in captured.out  # progress, then what was written
    back = pd.read_parquet(out) if suffix == ".parquet" else read_csv(out)
    run = tview.open_run(two_rank_run)
    assert_same_as_run(back, run)
    run.close()


def test_export_selection_from_the_command_line(two_rank_run, tmp_path):
    out = str(tmp_path / "some.csv")
    assert main(["export", two_rank_run, "--out", out, "--stats", "weight_norm", "--layers", "fc", "--ranks", "0"]) == 0
    back = read_csv(out)
    run = tview.open_run(two_rank_run)
    assert np.array_equal(back["value"], run.stat("weight_norm", "fc", 0)[1].astype(np.float64))
    assert set(back["statistic"]) == {"weight_norm"} and set(back["rank"]) == {0}
    run.close()


def test_export_bad_input_is_a_clear_error(two_rank_run, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "stats.xlsx")
    assert main(["export", two_rank_run, "--out", out]) == 2
    assert f"{out}: unknown file type" in capsys.readouterr().err
    assert main(["export", two_rank_run, "--out", str(tmp_path / "s.csv"), "--stats", "nope"]) == 2
    assert "no statistic 'nope'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "s.csv")]) == 2
    assert "nothing" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    out = str(tmp_path / "stats.parquet")
    assert main(["export", two_rank_run, "--out", out]) == 2
    assert "needs pyarrow: pip install 'tview[export]'" in capsys.readouterr().err
    assert not (tmp_path / "stats.parquet").exists()
