"""ParaView's desktop GUI under a private Xvfb screen with the openbox window manager, started as the README
says (`tview paraview RUN`), watched through its output and screenshots (`import -window root`).

Also a command, for the README's pictures: python -m tests.paraview.gui RUN OUT.png [OUT_AT_STEP_0.png]."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCREEN = (1280, 800)
READY = re.compile(r"tview: ready: .* \(((?:\d+x\d+ ?)+) pixels\)")
PLAYED = "is finished"  # ParaView's own line when a --test-script has been played
# ParaView's GUI-testing player (its --test-script) presses the time toolbar's "First Frame" once the script
# has run and `pause` milliseconds have passed: the time moves as when a person presses that button
FIRST_FRAME = """<?xml version="1.0" ?>
<pqevents>
  <pqevent object="pqClientMainWindow" command="pause" arguments="{pause}" />
  <pqevent object="pqClientMainWindow/VCRToolbar/actionVCRFirstFrame" command="activate" arguments="" />
</pqevents>
"""
# the same player presses Apply on the Properties panel, as a person does after File > Open
APPLY = """<?xml version="1.0" ?>
<pqevents>
  <pqevent object="pqClientMainWindow" command="pause" arguments="{pause}" />
  <pqevent object="pqClientMainWindow/propertiesDock/propertiesPanel/Accept" command="activate" arguments="" />
  <pqevent object="pqClientMainWindow" command="pause" arguments="3000" />
</pqevents>
"""


def missing_programs() -> list[str]:
    return [p for p in ("Xvfb", "openbox", "paraview", "import") if shutil.which(p) is None]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def desktop(size=SCREEN) -> Iterator[str]:
    """An Xvfb screen (its own display number, -displayfd) with openbox on it; yields DISPLAY."""
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{size[0]}x{size[1]}x24",
                             "-nolisten", "tcp"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(write_fd)
    wm = None
    try:
        with os.fdopen(read_fd) as f:
            display = ":" + f.readline().strip()
        wm = subprocess.Popen(["openbox"], env=dict(os.environ, DISPLAY=display), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # openbox takes the screen before the first window maps
        yield display
    finally:
        for proc in (wm, xvfb):
            if proc is not None:
                _stop(proc)


class ParaViewGUI:
    """`tview paraview RUN [-- PARAVIEW_ARGS]` on a display: its output lines as they come, screenshots."""

    def __init__(self, run: str, display: str, paraview_args: list[str] = (), plain: bool = False):
        env = dict(os.environ, DISPLAY=display, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "tview.cli", "paraview"] + ["--plain"] * plain + [run] + (
            ["--"] + list(paraview_args) if paraview_args else [])
        self.display = display
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put((time.monotonic(), line))

    def wait_for(self, pattern, timeout: float) -> tuple[float, re.Match | str]:
        """(when, match) of the first output line matching `pattern` (a regex or a plain string)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                at, line = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.lines.append(line)
            found = pattern.search(line) if isinstance(pattern, re.Pattern) else (pattern in line and line)
            if found:
                return at, found
        raise AssertionError(f"no line {pattern!r} from ParaView in {timeout:.0f} s; its output:\n"
                             + "".join(self.lines[-40:]))

    def screenshot(self, path: str) -> np.ndarray:
        subprocess.run(["import", "-window", "root", path], env=dict(os.environ, DISPLAY=self.display), check=True,
                       timeout=60)
        from PIL import Image
        return np.asarray(Image.open(path).convert("RGB"))

    def close(self):
        try:
            os.killpg(self.proc.pid, 15)  # tview's launcher and the paraview it started
        except ProcessLookupError:
            pass
        _stop(self.proc)


def view_sizes(match: re.Match) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in size.split("x")) for size in match.group(1).split()]


def _window_sums(mask: np.ndarray, w: int, h: int):
    """Fractions of `mask` along the four edges of every w x h rectangle, indexed by its top-left corner."""
    rows = np.concatenate([np.zeros((mask.shape[0], 1)), np.cumsum(mask, axis=1)], axis=1)
    cols = np.concatenate([np.zeros((1, mask.shape[1])), np.cumsum(mask, axis=0)], axis=0)
    ny, nx = mask.shape[0] - h + 1, mask.shape[1] - w + 1
    along = (rows[:, w:w + nx] - rows[:, :nx]) / w    # [y, x]: row y from x to x + w
    down = (cols[h:h + ny, :] - cols[:ny, :]) / h     # [y, x]: column x from y to y + h
    return along[:ny], along[h - 1:h - 1 + ny], down[:, :nx], down[:, w - 1:w - 1 + nx]


def find_views(shot: np.ndarray, sizes: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of each render view on the screen: a rectangle of the sizes ParaView reported whose four
    edges are the views' white background and whose outside, just above and left, is not (the GUI's frame)."""
    white = (shot >= 250).all(axis=2).astype(np.float64)
    found = []
    for w, h in sorted(set(sizes)):
        top, bottom, left, right = _window_sums(white, w, h)
        edges = np.minimum(np.minimum(top, bottom), np.minimum(left, right)) >= 0.97
        above = np.pad(top[:-1], ((1, 0), (0, 0)), constant_values=0.0) < 0.5
        before = np.pad(left[:, :-1], ((0, 0), (1, 0)), constant_values=0.0) < 0.5
        for y, x in zip(*np.nonzero(edges & above & before)):
            if not any(abs(x - fx) < 20 and abs(y - fy) < 20 for fx, fy, _, _ in found):
                found.append((int(x), int(y), w, h))
    return sorted(found, key=lambda r: (r[1] // 50, r[0]))


def content(shot: np.ndarray, rect) -> tuple[float, int]:
    """(fraction of pixels not background white, number of distinct colours) inside a view."""
    x, y, w, h = rect
    part = shot[y:y + h, x:x + w].reshape(-1, 3)
    return float((part < 250).any(axis=1).mean()), len(np.unique(part, axis=0))


PANEL = 360  # the Pipeline Browser and Properties panel: the screen's left strip (openbox, 1280x800, --dr)


def apply_lit(shot: np.ndarray) -> bool:
    """Whether the Apply button is lit: its pale green fills about 1500 pixels of the left panel (a grey button
    leaves a few stray ones: 5 seen)."""
    r, g, b = (shot[:, :PANEL, k].astype(int) for k in range(3))
    return int(((g > 200) & (g - r > 30) & (g - b > 30) & (b > 140)).sum()) > 300


def changed(a: np.ndarray, b: np.ndarray, rect) -> float:
    """Fraction of a view's pixels that differ between two screenshots."""
    x, y, w, h = rect
    return float((np.abs(a[y:y + h, x:x + w].astype(int) - b[y:y + h, x:x + w].astype(int)).max(axis=2) > 24).mean())


def first_frame_events(folder: str, pause_ms: int) -> str:
    return _events(folder, "first_frame.xml", FIRST_FRAME, pause_ms)


def apply_events(folder: str, pause_ms: int) -> str:
    return _events(folder, "apply.xml", APPLY, pause_ms)


def _events(folder: str, name: str, events: str, pause_ms: int) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(events.format(pause=pause_ms))
    return path


BACKGROUND = (82, 87, 110)  # ParaView's own grey behind a plain render view (its default palette)


def render_area(shot: np.ndarray, margin: int = 8) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the single render view of a plain ParaView: the largest block of its background grey."""
    grey = (np.abs(shot.astype(int) - BACKGROUND).max(axis=2) <= 6)
    ys, xs = np.nonzero(grey)
    x0, x1, y0, y1 = np.percentile(xs, 1), np.percentile(xs, 99), np.percentile(ys, 1), np.percentile(ys, 99)
    return int(x0) + margin, int(y0) + margin, int(x1 - x0) - 2 * margin, int(y1 - y0) - 2 * margin


def drawn_box(shot: np.ndarray, rect, right: int = 150) -> tuple[int, int, int, int, float]:
    """(x, y, w, h, coverage) of what is drawn on the grey of a plain render view (its right strip, the colour
    bar's, and its lower left corner, the orientation axes', left out): its box and the fraction of that box
    that is not grey."""
    x, y, w, h = rect
    part = shot[y:y + h, x:x + w - right].astype(int)
    drawn = np.abs(part - BACKGROUND).max(axis=2) > 24
    drawn[-120:, :120] = False
    ys, xs = np.nonzero(drawn)
    if not len(xs):
        return 0, 0, 0, 0, 0.0
    box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    return (*box, float(drawn[box[1]:box[1] + box[3], box[0]:box[0] + box[2]].mean()))


def yellow(shot: np.ndarray, rect) -> int:
    """Pixels of ParaView's default NaN colour (yellow, in its default Cool to Warm map) inside a view, its lower
    left corner (the orientation axes: a yellow Y) left out."""
    x, y, w, h = rect
    r, g, b = (shot[y:y + h, x:x + w, k].astype(int) for k in range(3))
    found = (r > 200) & (g > 200) & (b < 80)
    found[-150:, :150] = False
    return int(found.sum())


def solid(shot: np.ndarray, rect) -> int:
    """Pixels of a view drawn (not its grey) whose 3 x 3 neighbourhood is drawn too: dots, not one-pixel points."""
    x, y, w, h = rect
    drawn = np.abs(shot[y:y + h, x:x + w].astype(int) - BACKGROUND).max(axis=2) > 24
    drawn[-150:, :150] = False
    inner = drawn[1:-1, 1:-1].copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= drawn[1 + dy:drawn.shape[0] - 1 + dy, 1 + dx:drawn.shape[1] - 1 + dx]
    return int(inner.sum())


def main(argv: list[str]) -> None:
    """Screenshots of `tview paraview RUN` as a person sees it: at the last step, and at step 0 if asked."""
    run, out = argv[0], argv[1]
    at_zero = argv[2] if len(argv) > 2 else None
    with tempfile.TemporaryDirectory() as tmp, desktop() as display:
        args = ["--test-script=" + first_frame_events(tmp, 8000)] if at_zero else []
        gui = ParaViewGUI(run, display, args)
        try:
            gui.wait_for(READY, 300)
            time.sleep(3)
            gui.screenshot(out)
            if at_zero:
                gui.wait_for(PLAYED, 120)
                time.sleep(3)
                gui.screenshot(at_zero)
        finally:
            gui.close()


if __name__ == "__main__":
    main(sys.argv[1:])
