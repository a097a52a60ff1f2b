"""`tview render`'s checks of its arguments, made before pvbatch starts (no ParaView needed)."""

import subprocess

import pytest

from tests.conftest import PY, REPO, python_env
from tview.errors import TviewError
from tview.render import paraview_launch


def test_an_out_path_in_a_folder_that_does_not_exist_is_named_before_rendering(tmp_path):
    """VTK's PNG writer said only "Ran out of disk space" after the whole render, and pvbatch printed "wrote ...";
    now the folder is named up front. (A movie's folder is made, as its frames' folder is: `--animate --out
    movies/train.avi` works in a new folder.)"""
    out = str(tmp_path / "missing" / "network.png")
    with pytest.raises(TviewError, match=rf"--out {out}: the folder {tmp_path / 'missing'} does not exist"):
        paraview_launch.render(str(tmp_path / "run"), out)
    assert not (tmp_path / "missing").exists()


def test_the_command_line_says_it_in_one_line_and_exits_2(tmp_path):
    cli = subprocess.run([PY, "-m", "tview.cli", "render", str(tmp_path), "--out", str(tmp_path / "no" / "x.png")],
                         capture_output=True, text=True, cwd=REPO, env=python_env(), timeout=120)
    assert cli.returncode == 2 and "does not exist" in cli.stderr and "disk space" not in cli.stderr
