"""Starting ParaView's programs on a run: a clean environment, the plugin folder (installed with tview or in
the source tree), a private Xvfb screen when there is none, frames of a movie split across processes."""

from __future__ import annotations

import contextlib
import glob
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

from tview.errors import TviewError
from tview.render.views import RANK_MODES
from tview.render.views import VIEWS as _VIEWS
from tview.store import schema

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tview/
REPO = os.path.dirname(PACKAGE)
APT_HINT = ("install Debian's ParaView: apt-get install -y --no-install-recommends paraview python3-paraview "
            "python3-h5py python3-numpy xvfb xauth")
VIEWS = _VIEWS + ("layout",)
RANKS = tuple(m for m in RANK_MODES if m != "all")  # how the network and field views show ranks in a picture
SCREEN = "1600x1200x24"


def plugin_dir() -> str:
    """The folder holding tview_plugin.py: inside the installed package (a wheel), else the source tree's."""
    for path in (os.path.join(PACKAGE, "paraview_plugins"), os.path.join(REPO, "paraview_plugins")):
        if os.path.isfile(os.path.join(path, "tview_plugin.py")):
            return path
    raise TviewError(f"the ParaView plugin is missing: no tview_plugin.py in {PACKAGE}/paraview_plugins "
                     f"or {REPO}/paraview_plugins (a broken install: reinstall tview)")


def script(name: str) -> str:
    """A pvbatch/paraview script shipped with the plugin (paraview_plugins/scripts/<name>)."""
    return os.path.join(plugin_dir(), "scripts", name)


def find_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise TviewError(f"{name} not found on PATH; {APT_HINT}")
    return path


def clean_env(env: dict | None = None, autoload: bool = False) -> dict:
    """The environment for ParaView's own Python: no virtualenv or PYTHONPATH/PYTHONHOME leaking in (they
    crash pvbatch, and ParaView must use its own numpy and h5py), only the getargspec work-around on
    PYTHONPATH; with autoload, the plugin folder on PV_PLUGIN_PATH (for the GUI; scripts load it themselves)."""
    env = dict(os.environ if env is None else env)
    venv = env.pop("VIRTUAL_ENV", None)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "PYTHONUSERBASE"):
        env.pop(key, None)
    if venv:
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if not p.startswith(venv))
    plugins = plugin_dir()
    env["PYTHONPATH"] = os.path.join(plugins, "compat")  # holds sitecustomize.py alone
    env["PYTHONNOUSERSITE"] = "1"
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


def _read_display(fd: int, proc: subprocess.Popen, timeout: float) -> str:
    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(b"\n"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise TviewError(f"Xvfb did not start (exit status {proc.poll()}); {APT_HINT}")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:
                raise TviewError(f"Xvfb did not start (exit status {proc.wait()})")
            data += chunk
    return data.decode().strip()


@contextlib.contextmanager
def screen(env: dict, timeout: float = 30) -> Iterator[dict]:
    """`env` with a DISPLAY: its own if it has one, else a private Xvfb that picks a free display number itself
    (-displayfd: no race between concurrent renders, as `xvfb-run -a` has), stopped on exit. -noreset: an X server
    resets when its last client leaves and drops the connections that arrive meanwhile, which was the "bad X server
    connection" of pvbatch under mpirun (one process's first connection closed while another's opened)."""
    if env.get("DISPLAY"):
        yield env
        return
    read_fd, write_fd = os.pipe()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([find_program("Xvfb"), "-displayfd", str(write_fd), "-screen", "0", SCREEN,
                             "-nolisten", "tcp", "-noreset"], pass_fds=(write_fd,), stdout=log, stderr=log)
    os.close(write_fd)
    try:
        display = _read_display(read_fd, proc, timeout)
        yield dict(env, DISPLAY=f":{display}")
    finally:
        os.close(read_fd)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def render_args(run: str, out: str, view: str = "network", step: float | None = None, array: str | None = None,
                rank: int = 0, layer: str | None = None, example: int = 0, size_by: str | None = None,
                ranks: str = "one") -> list[str]:
    """render_view.py's arguments for one view (or the four-view layout) of a run."""
    if view not in VIEWS:
        raise TviewError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    if ranks not in RANKS:
        raise TviewError(f"unknown rank mode {ranks!r}; choose one of {', '.join(RANKS)}")
    args = [manifest_of(run), os.path.abspath(out), "--view", view, "--rank", str(rank), "--example", str(example)]
    if ranks != "one":
        args += ["--ranks", ranks]
    if step is not None:
        args += ["--step", str(step)]
    if array:
        args += ["--array", array]
    if layer:
        args += ["--layer", layer]
    if size_by:
        args += ["--size-by", size_by]
    return args


X_REFUSED = "bad X server connection"  # the X server dropped pvbatch's connection (seen here: 2-15% of connections)


def _stop(proc: subprocess.Popen) -> None:
    """End pvbatch, or mpirun and every pvbatch it started (their own process group)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


RENDER_HUNG = "(stopped: no picture in time)"  # ParaView 5.11 under mpirun hangs at times in its first render
RENDER_LIMIT = 120.0  # seconds from render_view's "rendering" line to its picture before it counts as hung


def _pvbatch_once(cmd: list[str], env: dict, timeout: float, echo: bool, mpi: bool = False) -> tuple[int, str]:
    """Run pvbatch (in a process group of its own), its output collected, progress lines echoed; stopped after
    `timeout` s, and under mpirun as soon as a process lost its X connection (the others would wait for it) or
    when a picture takes over RENDER_LIMIT s (process 0 seen in IceT's MPI_Comm_dup, the others waiting for its
    next command: with or without tview's exchanges)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    expired = []
    timers = [threading.Timer(timeout, lambda: (expired.append(f"still running after {timeout:.0f} s"), _stop(proc)))]
    timers[0].start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if echo and line.startswith(("frame ", "wrote ")):  # progress lines as they come
                print(line.rstrip(), flush=True)
            if mpi and X_REFUSED in line:
                _stop(proc)
            if mpi and line.startswith("rendering"):
                hung = threading.Timer(RENDER_LIMIT, lambda: (expired.append("no picture in time"), _stop(proc)))
                timers.append(hung)
                timers[-1].start()
            if line.startswith("wrote "):
                timers[-1].cancel()
        code = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    finally:
        for timer in timers:
            timer.cancel()
    lines += [f"\n(stopped: {why})\n" for why in expired]
    return code, "".join(lines)


def _run_pvbatch(cmd: list[str], what: str, timeout: float, echo: bool, attempts: int = 4, mpi: bool = False) -> str:
    """Run pvbatch on a screen; start again (a new screen) when the X server dropped its connection or (mpirun)
    a picture hung."""
    for attempt in range(1, attempts + 1):
        with screen(clean_env()) as env:
            code, text = _pvbatch_once(cmd, env, timeout, echo, mpi)
        why = next((w for w in (X_REFUSED, RENDER_HUNG) if w in text), None)
        if code == 0 or why is None or attempt == attempts:
            break
        what_happened = "the X server dropped pvbatch's connection" if why == X_REFUSED else \
            f"pvbatch drew no picture in {RENDER_LIMIT:.0f} s (a ParaView hang under mpirun)"
        print(f"tview: {what_happened}; trying again ({attempt + 1}/{attempts})", flush=True)
    if code != 0:
        raise TviewError(f"pvbatch could not render {what} (exit status {code}):\n{text[-3000:]}")
    return text


def mpi_command(processes: int, pvbatch: list[str]) -> list[str]:
    """`mpirun -np N` around a pvbatch command line, passing the screen and the clean PYTHONPATH on (2 cores
    here: --oversubscribe lets N exceed them; a process waiting for the others yields its core; --bind-to none:
    mpirun binds each process to one core when N <= 2, and a process then renders with one core however idle
    the other, and waits whenever other work lands on its own)."""
    return [find_program("mpirun"), "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
            "--mca", "mpi_yield_when_idle", "1",
            "-np", str(processes),
            "-x", "DISPLAY", "-x", "PYTHONPATH", "-x", "PYTHONNOUSERSITE"] + pvbatch


def render(run: str, out: str, timeout: float = 300, processes: int = 1, **kwargs) -> str:
    """Render one view of a run to a PNG through pvbatch; returns pvbatch's output, raises on failure. With
    processes > 1, `mpirun -np N pvbatch`: the reader's processes share the ranks (reductions over MPI)."""
    _check_out_folder(out)
    cmd = [find_program("pvbatch"), script("render_view.py")] + render_args(run, out, **kwargs)
    if processes > 1:
        cmd = mpi_command(processes, cmd)
    text = _run_pvbatch(cmd, run, timeout, echo=False, mpi=processes > 1)
    if not os.path.isfile(out):
        raise TviewError(f"pvbatch did not write {out}:\n{text[-3000:]}")
    return text


def animate(run: str, out: str, processes: int = 1, timeout: float = 1800, frames: int | None = None,
            **kwargs) -> str:
    """A movie of training: one frame per recorded step (or `frames` of them, evenly picked), rendered by
    `processes` pvbatch processes under mpirun (each a share of the frames), as PNGs in <out stem>_frames/,
    then encoded to `out` (.avi, .ogv: ParaView's own writers) or left as the PNG sequence (.png, a folder)."""
    frames_dir = frames_folder(out)
    os.makedirs(frames_dir, exist_ok=True)  # (and the movie's folder: the frames go beside it)
    for old in glob.glob(os.path.join(frames_dir, "frame_*.png")):
        os.remove(old)
    args = render_args(run, os.path.join(frames_dir, "frame.png"), **kwargs) + ["--animate"]
    if frames:
        args += ["--frames", str(frames)]
    cmd = [find_program("pvbatch"), script("render_view.py")] + args
    if processes > 1:  # independent pvbatch processes, each rendering every Nth frame (MPI rank from the env)
        cmd = mpi_command(processes, [cmd[0], "--no-mpi"] + cmd[1:])
    text = _run_pvbatch(cmd, run, timeout, echo=True)
    written = sorted(glob.glob(os.path.join(frames_dir, "frame_*.png")))
    if not written:
        raise TviewError(f"pvbatch wrote no frame into {frames_dir}:\n{text[-3000:]}")
    if os.path.splitext(out)[1].lower() in (".avi", ".ogv"):
        text += encode(frames_dir, out, timeout)
    return text


def _check_out_folder(out: str) -> None:
    """A TviewError naming --out and its folder where that folder does not exist (VTK's PNG writer says only
    "Ran out of disk space" there, after a render)."""
    folder = os.path.dirname(os.path.abspath(out.rstrip("/") or out))
    if not os.path.isdir(folder):
        raise TviewError(f"--out {out}: the folder {folder} does not exist (make it first)")


def frames_folder(out: str) -> str:
    """Where a movie's PNG frames go: `out` itself if it is a folder or ends in /, else <out stem>_frames/."""
    if out.endswith(os.sep) or os.path.isdir(out):
        return out
    return os.path.splitext(out)[0] + "_frames"


def encode(frames_dir: str, out: str, timeout: float = 600) -> str:
    """PNG frames to a movie with ParaView's own FFMPEG (.avi) or Ogg Theora (.ogv) writer, in pvpython."""
    cmd = [find_program("pvpython"), script("encode_movie.py"), frames_dir, os.path.abspath(out)]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or not os.path.isfile(out):
        raise TviewError(f"could not encode {out} from {frames_dir} (exit status {proc.returncode}):\n{text[-2000:]}")
    return text


def paraview_command(run: str, plain: bool = False) -> list[str]:
    """The ParaView GUI with the plugin loaded: by default straight into tview's four linked views, laid out by
    layout_state.py (it reads the run from TVIEW_RUN: see paraview_env); with plain, the run open in the reader
    alone (its network block, Apply to draw). --dr: ParaView's own settings left aside, so no Welcome dialog
    holds the script up (ParaView skips it with the registry disabled) and the layout is the same for everyone."""
    if plain:
        return [find_program("paraview"), "--dr", f"--data={manifest_of(run)}"]
    return [find_program("paraview"), "--dr", f"--script={script('layout_state.py')}"]


def paraview_env(run: str) -> dict:
    """The GUI's environment: clean, the plugin auto-loaded, the run and the scripts' folder for the layout script
    (the GUI runs it without __file__)."""
    env = clean_env(autoload=True)
    env["TVIEW_RUN"] = manifest_of(run)
    env["TVIEW_SCRIPTS"] = os.path.dirname(script("layout_state.py"))
    env["TVIEW_GUI"] = "1"
    return env


def add_render_arguments(r) -> None:
    """`tview render`'s arguments (on an argparse parser)."""
    r.add_argument("run")
    r.add_argument("--out", required=True, help="the PNG to write; with --animate a .avi/.ogv movie, or a .png "
                                                "or folder for the PNG sequence alone")
    r.add_argument("--view", default="network", choices=VIEWS, help="layout: network, field, filters and "
                                                                    "trajectory in one picture")
    r.add_argument("--step", type=float, default=None, help="training step (default: the last recorded)")
    r.add_argument("--array", default=None, help="the array to colour by (field: the statistic; default per view)")
    r.add_argument("--rank", type=int, default=0)
    r.add_argument("--ranks", default="one", choices=RANKS, help="network and field views: one rank (--rank), or "
                                                                  "the mean/spread/std across every rank")
    r.add_argument("--layer", default=None, help="one layer (filters, feature maps, trajectory, rank_field views)")
    r.add_argument("--example", type=int, default=0, help="the probe example whose feature maps to show")
    r.add_argument("--size-by", default=None, help="network view: size each channel's glyph by this statistic")
    r.add_argument("--animate", action="store_true", help="a movie: one frame per recorded step")
    r.add_argument("--frames", type=int, default=None, help="with --animate: this many steps, evenly picked")
    r.add_argument("--processes", type=int, default=1, help="pvbatch processes under mpirun: with --animate each "
                                                            "renders a share of the frames; else they share the "
                                                            "run's ranks (--ranks, rank_field: reduced over MPI)")


def render_command_line(a) -> None:
    """`tview render`: one picture, or with --animate the frames (and the movie), progress shown."""
    kwargs = dict(view=a.view, step=a.step, array=a.array, rank=a.rank, layer=a.layer, example=a.example,
                  size_by=a.size_by, ranks=getattr(a, "ranks", "one"))
    if a.processes < 1 or (a.frames is not None and a.frames < 1):
        raise TviewError("--processes and --frames must be at least 1")
    if not a.animate:
        started = time.time()
        text = render(a.run, a.out, processes=a.processes, **kwargs)
        print("\n".join(line for line in text.splitlines() if line.startswith(("wrote ", "labels: "))))
        print(f"rendered in {time.time() - started:.1f} s")
        return
    started = time.time()
    animate(a.run, a.out, processes=a.processes, frames=a.frames, **kwargs)
    ext = os.path.splitext(a.out)[1].lower()
    made = a.out if ext in (".avi", ".ogv") else f"the PNG sequence in {frames_folder(a.out)}"
    if ext not in (".avi", ".ogv", ".png", ""):
        made += f" (no {ext} encoder here: ParaView writes .avi and .ogv)"
    print(f"wrote {made} in {time.time() - started:.1f} s")


def paraview_command_line(a) -> int:
    """`tview paraview RUN` (the GUI, four linked views; --plain: the reader alone) or `--plugin-path`."""
    if a.plugin_path:
        print(plugin_dir())
        return 0
    if not a.run:
        raise TviewError("give a run (tview paraview RUN), or --plugin-path")
    env = paraview_env(a.run)
    if not env.get("DISPLAY"):
        raise TviewError("the ParaView GUI needs a screen (no DISPLAY); use `tview render` without one")
    extra = list(getattr(a, "paraview_args", None) or [])
    extra = extra[1:] if extra[:1] == ["--"] else extra
    return subprocess.call(paraview_command(a.run, a.plain) + extra, env=env)
