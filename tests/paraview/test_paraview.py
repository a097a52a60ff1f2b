"""The ParaView plugin in Debian's real pvbatch (clean environment, Xvfb for rendering, mpirun for 2 ranks),
compared with tview.open_run on a run made by the demo."""

import json
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import tview
from tests.conftest import PY, live_writer, python_env
from tview.render import analysis, scene
from tview.render.paraview_launch import clean_env

pytestmark = pytest.mark.slow
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pv_probe.py")


@pytest.fixture(scope="module", autouse=True)
def need_paraview():
    if shutil.which("pvbatch") is None:
        pytest.fail("pvbatch is missing: scripts/test.sh installs Debian's paraview")


def probe(args: dict, mpi: int = 0, timeout: int = 180) -> tuple[dict | None, str]:
    """Run pv_probe.py in pvbatch (under mpirun with `mpi` processes if given); (its JSON, all output)."""
    env = clean_env()
    cmd = ["pvbatch", PROBE, json.dumps(args)]
    if mpi:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(mpi), "-x", "PYTHONPATH"] + cmd
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]  # ParaView never crashes, whatever the input
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    return (json.loads(lines[-1][6:]) if lines else None), out


def nan_equal(a, b):
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True, rtol=1e-6)


@pytest.fixture(scope="module")
def demo(runs_root):
    return str(runs_root / "demo")


def test_reader_lists_steps_layers_and_arrays_equal_to_open_run(demo):
    run = tview.open_run(demo)
    steps = scene.time_steps(run)
    t = float(steps[len(steps) // 2]) + 1  # between two recorded steps: the one before is shown
    got, _ = probe({"file": f"{demo}/run.tview", "properties": {"RankMode": 0, "Rank": 1}, "time": t})
    assert got["steps"] == [float(s) for s in steps] == [float(s) for s in run.steps(0)]
    assert got["layers"] == run.layers
    assert got["rank_domain"] == [0, 1]  # Rank offers the run's ranks (it offered 0-1024 whatever the run)
    blocks = got["data"]["blocks"]
    net = blocks["network"]
    assert net["tview_rank"] == 1 and net["points"] == sum(i["channels"] for i in run.layer_info)
    # every per-channel and layer statistic, against the reader's own arrays
    at = int(steps[len(steps) // 2])
    layer_of = np.array(net["arrays"]["layer"])
    names = [i["name"] for i in scene.channel_layers(run)]
    for li, name in enumerate(names):
        s, g = run.stat("grad_norm", name, rank=1)  # activation layers have no gradient: NaN there
        expected = g[list(s).index(at)] if at in s else np.nan
        assert nan_equal(np.array(net["arrays"]["grad_norm"])[layer_of == li], expected)
        s, m = run.stat("act_channel_mean", name, rank=1)
        rows = np.flatnonzero((s <= at) & np.isfinite(m).any(axis=1))
        assert nan_equal(np.array(net["arrays"]["act_channel_mean"])[layer_of == li], m[rows[-1]])
    # trajectories, filters at the latest snapshot, feature maps, fields
    s, coords = run.trajectory("conv1", rank=1)
    assert nan_equal(blocks["trajectories"]["blocks"]["conv1"]["positions"], coords[:, :3])
    assert blocks["trajectories"]["blocks"]["conv1"]["lines"] == 1
    snap, grid = scene.filter_grid(run, "conv2", at, rank=1)
    f = blocks["filters"]["blocks"]["conv2"]
    assert f["snapshot_step"] == snap and f["class"] == "vtkRectilinearGrid"
    cells(f, grid)  # one cell per weight, gaps hidden
    _, w = run.filters("conv2", at, rank=1)
    assert np.count_nonzero(np.array(f["cell_arrays"]["vtkGhostType"]) == 0) == w.size
    assert f["labels"][:2] == ["f0", "f1"] and "in 0" in f["labels"]
    _, maps, picture = scene.feature_grid(run, "conv1", at, rank=1)
    fm = blocks["feature_maps"]["blocks"]
    cells(fm["conv1"], maps)
    cells(fm["input"], picture)
    _, field = scene.layer_field(run, "grad_norm", rank=1)
    cells(blocks["fields"]["blocks"]["grad_norm"], field)
    assert blocks["fields"]["blocks"]["grad_norm"]["labels"] == [n for n in run.layers if n.startswith(("conv", "fc"))]
    _, cfield = scene.channel_field(run, "act_channel_zero_frac", "conv2", rank=1)
    cells(blocks["fields"]["blocks"]["act_channel_zero_frac/conv2"], cfield)
    assert blocks["network"]["labels"][0] == "conv1 (6)"


def test_a_caption_names_the_step_of_the_snapshot_shown_not_the_time(demo):
    run = tview.open_run(demo)
    snaps, steps = run.snapshot_steps(1), scene.time_steps(run)
    time_ = float(steps[steps > snaps[-2]][0])  # just after the last snapshot but one: that snapshot is shown
    template = "{layer} · {run} · {ranks} · step {step}"
    got, out = probe({"file": f"{demo}/run.tview", "properties": {"Rank": 1}, "time": time_, "fetch": False,
                      "caption": {"block": "/Root/filters/conv2", "template": template}})
    assert got["caption"] == f"conv2 · demo · rank 1 · step {snaps[-2]}", out[-2000:]
    assert time_ != snaps[-2]


def cells(block, grid):
    """A reader block holds the Grid as cell data: its values (row 0 at the top), hidden cells as ghosts."""
    rows, cols = grid.values.shape
    assert block["dimensions"] == [cols + 1, rows + 1, 1]
    assert nan_equal(block["cell_arrays"][grid.name], grid.values[::-1].reshape(-1))
    assert np.array_equal(np.array(block["cell_arrays"]["vtkGhostType"]) != 0, grid.hidden[::-1].reshape(-1))


def test_mean_and_spread_across_ranks_and_the_filters(demo):
    run = tview.open_run(demo)
    nets = [scene.network(run, r, None) for r in run.ranks]
    stack = np.stack([n.arrays["local_grad_norm"] for n in nets])
    _, maps = run.feature_maps("conv2", None, rank=0)
    threshold = clear_threshold(maps, 0.5)
    mean, _ = probe({"file": f"{demo}/run.tview", "properties": {"RankMode": 2}})
    spread, _ = probe({"file": f"{demo}/run.tview", "properties": {"RankMode": 3}})
    assert nan_equal(mean["data"]["blocks"]["network"]["arrays"]["local_grad_norm"], stack.mean(axis=0))
    assert nan_equal(spread["data"]["blocks"]["network"]["arrays"]["local_grad_norm"], stack.max(0) - stack.min(0))
    assert np.nanmax(stack.max(0) - stack.min(0)) > 0  # local gradients do differ between ranks
    got, _ = probe({"file": f"{demo}/run.tview", "properties": {"RankMode": 1}, "spread": "act_channel_mean",
                    "similarity": {"layer": "conv2", "threshold": threshold}})
    m = np.stack([n.arrays["act_channel_mean"] for n in nets])
    assert nan_equal(got["spread"]["arrays"]["act_channel_mean_spread"], m.max(0) - m.min(0))
    groups = analysis.similarity_groups(maps, threshold)
    group = np.array(got["similarity"]["arrays"]["group"])
    assert len(group) == maps.shape[1]
    assert sorted(sorted(np.flatnonzero(group == k).tolist()) for k in range(len(groups))) == sorted(groups)
    assert (group == -1).sum() == maps.shape[1] - sum(len(g) for g in groups)


def clear_threshold(maps, near):
    """A threshold near `near` that no pair of channels correlates within 1e-6 of: ParaView's numpy 1.24 and
    the venv's numpy 2 may round a correlation sitting on the threshold to either side."""
    c = maps.shape[1]
    r = analysis.pearson_matrix(np.moveaxis(np.asarray(maps, dtype=np.float64), 1, 0).reshape(c, -1))
    values = np.sort(r[np.triu_indices(c, 1)][np.isfinite(r[np.triu_indices(c, 1)])])
    if not len(values) or np.abs(values - near).min() > 1e-6:
        return near
    gaps = np.diff(np.concatenate([[-1.0], values, [1.0]]))
    k = int(np.argmax(gaps * (np.abs(np.concatenate([[-1.0], values])[:] - near) < 0.1)))
    return float((np.concatenate([[-1.0], values])[k] + np.concatenate([values, [1.0]])[k]) / 2)


def test_two_paraview_ranks_split_the_reading(demo):
    got, out = probe({"file": f"{demo}/run.tview", "properties": {"RankMode": 1}}, mpi=2)
    per_process = got["data"]["blocks"]  # Fetch gathers one block per ParaView process
    assert sorted(per_process) == ["0", "1"], out[-2000:]
    read = {}
    for proc, data in per_process.items():
        for name, block in data["blocks"]["network"]["blocks"].items():
            if block is not None:
                read[name] = (int(proc), block["piece"], block["tview_rank"])
    assert read == {"rank 0": (0, 0, 0), "rank 1": (1, 1, 1)}  # each process read one tview rank


def render(demo, out, *args):
    proc = subprocess.run([PY, "-m", "tview.cli", "render", demo, "--out", str(out)] + list(args),
                          capture_output=True, text=True, env=python_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def nan_coloured(img, views_across=1, bar_pixels=96):
    """Pixels in the views' NaN colour (magenta), which they keep for real NaN only; each view's right margin, where
    its colour bar shows a NaN swatch, left out (`views_across`: views side by side in the picture)."""
    width = img.shape[1] // views_across
    img = np.concatenate([img[:, k * width:(k + 1) * width - bar_pixels] for k in range(views_across)], axis=1)
    r, g, b = (img[..., k].astype(int) for k in range(3))
    return int(((r > 240) & (g < 60) & (b > 240)).sum())


def test_each_view_renders_a_picture(demo, tmp_path):
    from PIL import Image
    run = tview.open_run(demo)
    expect = {"network": [f"{i['name']} ({i['channels']})" for i in run.layer_info],
              "trajectory": ["conv1", "fc3"], "filters": ["f0", "f15", "in 5"], "feature_maps": ["c0", "input 0"],
              "field": ["conv1", "fc3"], "layout": ["conv1 (6)", "f15", "fc3"]}
    for view, labels in expect.items():
        out = tmp_path / f"{view}.png"
        extra = ["--size-by", "act_channel_zero_frac"] if view == "network" else []  # glyphs sized by a statistic
        text = render(demo, out, "--view", view, *extra)
        img = np.asarray(Image.open(out).convert("RGB"))
        flat = img.reshape(-1, 3)
        drawn = (flat != flat[0]).any(axis=1)  # the corner is background
        assert drawn.mean() > 0.01, f"{view}: {drawn.mean():.4f} of the picture differs from the background"
        assert len(np.unique(flat, axis=0)) > 20, view  # a colour map, not a flat shape
        assert nan_coloured(img, 2 if view == "layout" else 1) == 0, f"{view}: NaN-coloured pixels"
        drawn_labels = [line for line in text.splitlines() if line.startswith("labels: ")][0][8:].split("|")
        assert set(labels) <= set(drawn_labels), (view, drawn_labels)  # text actors beside their slabs/rows


def test_a_tall_network_seen_from_above_is_drawn_whole(tmp_path):
    """20 slabs (ResetCamera's bounding sphere put the top one, nearest the camera, at the edge: its dots cut)."""
    from PIL import Image

    from tview.store.synthetic import write_synthetic_run
    run = write_synthetic_run(str(tmp_path / "tall"), 5, ranks=1, layers=20, channel_tail=10)
    out = tmp_path / "network.png"
    text = render(run, out, "--view", "network")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    drawn = (np.abs(img - img[-1, -1]).sum(axis=2) > 30).any(axis=1)  # rows with anything on them
    assert not drawn[:8].any() and not drawn[-8:].any(), "a slab touches the picture's top or bottom edge"
    assert "block9.relu (16)" in text  # the top slab's label


def test_the_movie_has_a_frame_per_step_asked_for_split_across_processes(demo, tmp_path):
    out = render(demo, tmp_path / "train.avi", "--view", "network", "--animate", "--frames", "4", "--processes", "2")
    frames = sorted(os.listdir(tmp_path / "train_frames"))
    assert frames == [f"frame_{i:05d}.png" for i in range(4)]
    assert {line.split("(process ")[1][0] for line in out.splitlines() if line.startswith("frame ")} == {"0", "1"}
    assert (tmp_path / "train.avi").stat().st_size > 10000


def test_bad_input_is_reported_and_paraview_goes_on(runs_root, tmp_path):
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "run.tview").write_text("{not json")
    got, out = probe({"file": str(tmp_path / "notarun" / "run.tview")})
    assert got["steps"] == [] and "unreadable manifest" in out and str(tmp_path / "notarun") in out
    got, out = probe({"file": str(tmp_path / "missing" / "run.tview")})
    assert got["steps"] == [] and "no such folder" in out
    got, out = probe({"file": f"{runs_root}/demo/run.tview", "properties": {"Rank": 7}})  # typed past the ranks
    assert "rank 7 is not a rank of demo (ranks 0-1): showing rank 1" in out
    assert got["data"]["blocks"]["network"]["tview_rank"] == 1
    got, out = probe({"file": f"{runs_root}/broken/run.tview", "properties": {"RankMode": 1}})
    assert "rank-00001.h5" in out and "rank 1 left out" in out
    net = got["data"]["blocks"]["network"]["blocks"]
    assert list(net) == ["rank 0"] and net["rank 0"]["points"] > 0  # the readable rank is still shown


def test_reloading_follows_a_live_run(tmp_path):
    live = tmp_path / "live"
    with live_writer(live):  # the probe reloads until the run lists a step, then until it lists more (30 s at most)
        got, out = probe({"file": f"{live}/run.tview", "fetch": False, "reload_until_more": 30})
    before, after = got["steps"], got["steps_after_reload"]
    assert 0 < len(before) < len(after), out[-2000:]
    assert after[:len(before)] == before


def test_file_open_in_a_plain_paraview_gui_shows_the_network_coloured(demo, tmp_path):
    """File > Open of run.tview in ParaView's GUI with the plugin (what `tview paraview RUN --plain` does): the tview
    reader is picked, the time steps are the run's, and Apply shows the network's points as dots coloured by a
    statistic every layer has from the first step on, the layers side by side before ParaView's camera, not every
    block on top of another as one solid surface."""
    from tview.render.paraview_launch import paraview_command, paraview_env, screen
    from tview.render.views import network_colour
    cmd = paraview_command(demo, plain=True)
    assert cmd[1:] == ["--dr", f"--data={demo}/run.tview"]
    out = tmp_path / "gui.json"
    script = tmp_path / "gui_check.py"
    script.write_text(f"""import json, os
from paraview import simple as pv
try:
    src = pv.OpenDataFile({f"{demo}/run.tview"!r})
    src.UpdatePipelineInformation()
    shown = pv.Show(src)
    pv.Render()
    info = src.GetDataInformation()
    json.dump({{"reader": src.GetXMLName(), "steps": len(src.TimestepValues), "blocks": [str(b) for b in src.Blocks],
               "representation": shown.SMProxy.GetProperty("Representation").GetElement(0),
               "colour": [str(c) for c in shown.ColorArrayName], "points": info.GetNumberOfPoints(),
               "cells": info.GetNumberOfCells(), "bounds": list(info.GetBounds())}}, open({str(out)!r}, "w"))
finally:
    os._exit(0)
""")
    env = paraview_env(demo)
    env.pop("DISPLAY", None)
    with screen(env) as env:
        proc = subprocess.run([cmd[0], "--dr", f"--script={script}"], env=env, capture_output=True, text=True,
                              timeout=180)
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    got = json.loads(out.read_text())
    run = tview.open_run(demo)
    assert got["reader"] == "TviewRunReader" and got["steps"] == len(run.steps(0))
    assert got["blocks"] == ["network"] and got["representation"] == "Point Gaussian"  # dots, not 1-pixel points
    assert got["colour"] == ["POINTS", network_colour(scene.statistic_arrays(run))]  # act_channel_zero_frac
    x0, x1, y0, y1, z0, z1 = got["bounds"]
    assert z0 == z1 == 0 and x1 - x0 > y1 - y0 > 0  # facing ParaView's camera (down -z), the layers side by side
    assert got["points"] == sum(i["channels"] for i in run.layer_info) == got["cells"]  # a point per channel


@pytest.fixture(scope="module")
def ragged(tmp_path_factory):
    """5 ranks (2 ParaView processes get 3 and 2 of them), rank 3 stopped at step 29 of 40: holes in every
    reduction."""
    from tests.render.test_scene import make_ragged_run
    return make_ragged_run(str(tmp_path_factory.mktemp("ragged")), ranks=5, short=3)


def on_steps_numpy(steps, at, values):
    out = np.full((len(steps),) + np.shape(values)[1:], np.nan)
    hit = np.isin(steps, at)
    out[hit] = np.asarray(values, dtype=float)[np.searchsorted(at, steps[hit])]
    return out


def reduced(stack, mode):
    stack = np.where(np.isfinite(stack), stack, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN points stay NaN
        return {"mean": np.nanmean(stack, 0), "spread": np.nanmax(stack, 0) - np.nanmin(stack, 0),
                "std": np.nanstd(stack, 0)}[mode]


def test_mpi_processes_reduce_only_their_own_ranks_to_numpys_mean_and_spread(ragged):
    run = tview.open_run(ragged)
    step, names = 35.0, ["grad_norm", "act_channel_mean"]
    live = [r for r in run.ranks if run.steps(r)[-1] >= step]  # rank 3 stopped at 29: left out of the network's
    assert len(live) == len(run.ranks) - 1  # combinations at 35, as of the fields'
    nets = {n: np.stack([scene.network(run, r, step, None, names).arrays[n] for r in live]) for n in names}
    steps = run.stat_matrix("grad_norm", 0)[0]
    fields = np.stack([on_steps_numpy(steps, *(lambda s, m: (s, np.ma.filled(m.astype(float), np.nan)))(
        *run.stat_matrix("grad_norm", r))) for r in run.ranks])  # [ranks, steps, layers]
    assert np.isnan(fields[3, 30:]).all() and len(run.steps(3)) == 30
    by_mode = {}
    for mode, code in (("mean", 2), ("spread", 3)):
        got, out = probe({"file": f"{ragged}/run.tview", "time": step,
                          "properties": {"RankMode": code, "Statistics": names,
                                         "Blocks": ["network", "fields"] + ["rank_fields"] * (mode == "mean")}}, mpi=2)
        per = got["data"]["blocks"]
        assert per["0"]["ranks_read"] == [0, 2, 4] and per["1"]["ranks_read"] == [1, 3], out[-2000:]
        blocks = per["0"]["blocks"]
        for name in names:  # the network: process 0 holds the combination of both processes' partial sums
            assert nan_equal(blocks["network"]["arrays"][name], reduced(nets[name], mode)), (mode, name)
        assert per["1"]["blocks"]["network"] is None
        field = blocks["fields"]["blocks"]["grad_norm"]
        assert field["reduction"] == mode
        assert nan_equal(field["cell_arrays"]["grad_norm"], reduced(fields, mode).T[::-1].reshape(-1))
        by_mode[mode] = blocks
    rank_field = by_mode["mean"]["rank_fields"]["blocks"]["grad_norm"]  # rows of both processes, gathered in rank order
    layer = rank_field["tview_layer"]
    rows = np.stack([on_steps_numpy(steps, *run.stat("grad_norm", layer, r)) for r in run.ranks])
    assert nan_equal(rank_field["cell_arrays"]["grad_norm"], rows[::-1].reshape(-1))
    assert np.array_equal(np.array(rank_field["cell_arrays"]["vtkGhostType"]) != 0, np.isnan(rows[::-1].reshape(-1)))
    assert rank_field["labels"][:5] == [f"rank {r}" for r in run.ranks]


def test_mpirun_renders_the_rank_field_as_one_process_does(ragged, tmp_path):
    from PIL import Image
    pictures = []
    for processes in ("1", "2"):
        out = tmp_path / f"ranks-{processes}.png"
        text = render(ragged, out, "--view", "rank_field", "--processes", processes)
        assert f"({processes} ParaView processes)" in text
        assert "rank 0" in text and "rank 4" in text
        pictures.append(np.asarray(Image.open(out).convert("RGB"), dtype=int))
    one, two = pictures
    assert one.shape == two.shape and len(np.unique(one.reshape(-1, 3), axis=0)) > 20
    assert (np.abs(one - two).max(axis=2) > 8).mean() < 0.001  # the same picture, labels included


def test_the_private_screen_keeps_its_state_when_its_last_client_leaves():
    """tview's own Xvfb does not reset when its last client disconnects: a reset drops the connections arriving
    meanwhile, and under mpirun one pvbatch's connection arrived while another's had just closed ("bad X server
    connection", 3 of 10 two-process renders). A reset also wipes the root window's properties, which shows it."""
    from tview.render.paraview_launch import screen
    env = clean_env()
    env.pop("DISPLAY", None)
    with screen(env) as env:
        subprocess.run(["xprop", "-root", "-f", "TVIEW_MARK", "8s", "-set", "TVIEW_MARK", "kept"], env=env, check=True,
                       timeout=30)  # this client leaves: it was the last one
        shown = subprocess.run(["xprop", "-root", "TVIEW_MARK"], env=env, capture_output=True, text=True, timeout=30)
    assert shown.stdout.strip() == 'TVIEW_MARK(STRING) = "kept"', shown.stdout + shown.stderr


def test_mpirun_lets_each_process_use_every_core():
    """`tview render --processes N` does not pin each process to one core (mpirun's default for N <= 2): pinned,
    a process rendered with one core however idle the other, and waited whenever other work landed on its own."""
    from tview.render.paraview_launch import mpi_command
    cmd = mpi_command(2, [shutil.which("python3"), "-c", "import os; print(sorted(os.sched_getaffinity(0)))"])
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = re.findall(r"\[[^\]]*\]", proc.stdout)  # mpirun may join the two lines
    assert [json.loads(cores) for cores in printed] == [sorted(os.sched_getaffinity(0))] * 2, proc.stdout
