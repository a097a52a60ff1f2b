"""The wheel: built from the checkout, installed (not editable) into a fresh virtualenv outside it, and its
commands run from there: tview demo, dashboard, render, paraview --plugin-path, and the plugin loaded by
ParaView's own Python (pvbatch) from the installed package, with ParaView's numpy and h5py, never the venv's.

No network: the wheel is installed with --no-deps, and the fresh venv borrows the test environment's
dependencies through a path (.pth) entry that adds their folder without running its .pth files (so the
checkout's editable install stays out)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run(cmd, cwd, env, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(venv folder, environment, a folder outside the checkout) with the tview wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    assert not str(root).startswith(REPO)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
         REPO], root, dict(os.environ))
    wheel = [f for f in os.listdir(root / "dist") if f.endswith(".whl")][0]
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, dict(os.environ))
    py = str(venv / "bin" / "python")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "--force-reinstall", "-q",
         str(root / "dist" / wheel)], root, clean)
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, {}).strip()
    with open(os.path.join(site, "tview_test_deps.pth"), "w") as f:  # after the install: pip must not see them
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # numpy, h5py, torch, dash... of the test env
    env = dict(clean)
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv}/bin{os.pathsep}{env.get('PATH', '')}")
    work = root / "work"
    work.mkdir()
    return venv, env, work


def test_the_wheel_holds_every_package_and_the_plugin(venv):
    venv, env, work = venv
    out = run([str(venv / "bin" / "python"), "-c", "import json, tview, tview_app, tview.render.paraview_launch as p;"
               "print(json.dumps([tview.__file__, tview_app.__file__, p.plugin_dir()]))"], work, env)
    tview_file, app_file, plugins = json.loads(out)
    for path in (tview_file, app_file, plugins):
        assert path.startswith(str(venv)) and not path.startswith(REPO), path
    assert {"compat", "scripts", "tview_plugin.py"} <= set(os.listdir(plugins))
    installed = os.path.dirname(tview_file)
    for folder, _, files in os.walk(os.path.join(REPO, "tview")):  # every subpackage of the source tree
        if "__init__.py" in files:
            assert os.path.isdir(os.path.join(installed, os.path.relpath(folder, os.path.join(REPO, "tview"))))


def test_demo_render_dashboard_and_paraview_from_the_installed_package(venv):
    venv, env, work = venv
    tview = str(venv / "bin" / "tview")
    run([tview, "demo", "--out", "runs/demo", "--ranks", "1", "--steps", "60", "--snapshot-every", "20"], work, env)
    plugins = run([tview, "paraview", "--plugin-path"], work, env).strip()
    assert plugins.startswith(str(venv)) and os.path.isfile(os.path.join(plugins, "tview_plugin.py"))
    run([tview, "render", "runs/demo", "--out", "filters.png", "--view", "filters"], work, env)
    assert (work / "filters.png").stat().st_size > 10000
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([tview, "dashboard", "runs", "--port", str(port)], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        page = _get(f"http://127.0.0.1:{port}/", server)
        assert "tview" in page.lower()
    finally:
        server.kill()
        server.wait()


def _get(url, server, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError:
            assert server.poll() is None and time.time() < deadline, "the dashboard did not start"
            time.sleep(0.5)


def test_paraview_loads_the_installed_plugin_with_its_own_numpy(venv):
    """pvbatch, with the environment `tview paraview` gives it, loads the plugin from the installed package,
    which imports the installed tview and ParaView's own numpy and h5py: nothing of the venv on sys.path."""
    if shutil.which("pvbatch") is None:
        pytest.fail("pvbatch is missing: scripts/test.sh installs Debian's paraview")
    venv, env, work = venv
    pv_env = json.loads(run([str(venv / "bin" / "python"), "-c", "import json; from tview.render.paraview_launch "
                             "import clean_env; print(json.dumps(clean_env(autoload=True)))"], work, env))
    probe = work / "probe.py"
    probe.write_text("""import json, sys
from paraview import simple as pv
pv.LoadPlugin(sys.argv[1] + "/tview_plugin.py")
import h5py, numpy, tview
print("PROBE " + json.dumps({"numpy": numpy.__file__, "h5py": h5py.__file__, "tview": tview.__file__,
                             "path": sys.path, "reader": hasattr(pv, "tviewRunReader")}))
""")
    out = run(["pvbatch", str(probe), pv_env["PV_PLUGIN_PATH"]], work, pv_env)
    got = json.loads([line for line in out.splitlines() if line.startswith("PROBE ")][0][6:])
    assert got["reader"] and got["tview"].startswith(str(venv))
    for module in ("numpy", "h5py"):
        assert not got[module].startswith(str(venv)) and "site-packages" not in got[module], got[module]
    compat = pv_env["PYTHONPATH"]  # the getargspec work-around: a folder holding sitecustomize.py alone
    assert set(os.listdir(compat)) - {"__pycache__"} == {"sitecustomize.py"}
    assert not [p for p in got["path"] if p != compat and (p.startswith(str(venv)) or "site-packages" in p)]
