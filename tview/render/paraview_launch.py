"""Starting ParaView's programs on a run: a clean environment, the plugin folder, Xvfb when there is no screen."""

from __future__ import annotations

import os
import shutil
import subprocess

from tview.errors import TviewError
from tview.store import schema

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APT_HINT = ("install Debian's ParaView: apt-get install -y --no-install-recommends paraview python3-paraview "
            "python3-h5py python3-numpy xvfb xauth")


def plugin_dir() -> str:
    path = os.path.join(REPO, "paraview_plugins")
    if not os.path.isfile(os.path.join(path, "tview_plugin.py")):
        raise TviewError(f"{path}: the ParaView plugin is missing (tview must run from its source tree for ParaView)")
    return path


def find_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise TviewError(f"{name} not found on PATH; {APT_HINT}")
    return path


def clean_env(env: dict | None = None, autoload: bool = False) -> dict:
    """The environment for ParaView's own Python: no virtualenv or PYTHONPATH/PYTHONHOME leaking in (they
    crash pvbatch) and the getargspec work-around on PYTHONPATH; with autoload, the plugin folder on
    PV_PLUGIN_PATH (for the GUI; scripts load the plugin themselves)."""
    env = dict(os.environ if env is None else env)
    venv = env.pop("VIRTUAL_ENV", None)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH"):
        env.pop(key, None)
    if venv:
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if not p.startswith(venv))
    plugins = plugin_dir()
    env["PYTHONPATH"] = os.path.join(plugins, "compat")
    if autoload:
        env["PV_PLUGIN_PATH"] = plugins
    else:
        env.pop("PV_PLUGIN_PATH", None)
    return env


def manifest_of(run: str) -> str:
    path = run if run.endswith(schema.MANIFEST_NAME) else os.path.join(run, schema.MANIFEST_NAME)
    if not os.path.isfile(path):
        raise TviewError(f"{run}: not a tview run (no {schema.MANIFEST_NAME})")
    return os.path.abspath(path)


def with_screen(cmd: list[str], env: dict) -> list[str]:
    """Rendering needs an X server: run under xvfb-run when there is no DISPLAY."""
    if env.get("DISPLAY"):
        return cmd
    return [find_program("xvfb-run"), "-a", "-s", "-screen 0 1280x1024x24"] + cmd


def render_command(run: str, out: str, view: str = "network", step: float | None = None, array: str | None = None,
                   rank: int = 0, layer: str | None = None, env: dict | None = None) -> list[str]:
    cmd = [find_program("pvbatch"), os.path.join(plugin_dir(), "scripts", "render_view.py"), manifest_of(run),
           os.path.abspath(out), "--view", view, "--rank", str(rank)]
    if step is not None:
        cmd += ["--step", str(step)]
    if array:
        cmd += ["--array", array]
    if layer:
        cmd += ["--layer", layer]
    return with_screen(cmd, env if env is not None else os.environ)


def render(run: str, out: str, timeout: float = 300, **kwargs) -> str:
    """Render one view of a run to a PNG through pvbatch; returns pvbatch's output, raises on failure."""
    env = clean_env()
    cmd = render_command(run, out, env=env, **kwargs)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or not os.path.isfile(out):
        raise TviewError(f"pvbatch could not render {run} (exit status {proc.returncode}):\n{text[-3000:]}")
    return text


def paraview_command(run: str) -> list[str]:
    """The ParaView GUI with the plugin loaded and the run open."""
    return [find_program("paraview"), f"--data={manifest_of(run)}"]
