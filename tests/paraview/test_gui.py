"""ParaView's desktop GUI as a person starts it (`tview paraview RUN`, under Xvfb with the openbox window
manager): the four linked views are drawn without a click, and moving the time changes what they show."""

import time

import pytest

from tests.paraview import gui

pytestmark = pytest.mark.slow
PAUSE_MS = 40000  # from the layout's ready mark to the "First Frame" press: room for the first screenshots


@pytest.fixture(scope="module", autouse=True)
def need_programs():
    missing = gui.missing_programs()
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: scripts/test.sh installs them (paraview, xvfb, openbox, "
                    f"imagemagick)")


def drawn(shot, rect) -> bool:
    """The view holds a picture: not one colour, not nearly empty."""
    filled, colours = gui.content(shot, rect)
    return filled > 0.02 and colours > 20


def shoot_until(app, path: str, done, until: float):
    """Screenshots (Qt paints the views a while after ParaView says they are drawn) until done(shot) or the
    time.monotonic() `until` passes; (the last shot, when it was taken)."""
    while True:
        shot = app.screenshot(path)
        at = time.monotonic()
        if done(shot) or at > until:
            return shot, at
        time.sleep(0.5)


def test_tview_paraview_opens_four_drawn_views_that_follow_the_time(runs_root, tmp_path):
    run = str(runs_root / "demo")
    with gui.desktop() as display:
        app = gui.ParaViewGUI(run, display, ["--test-script=" + gui.first_frame_events(str(tmp_path), PAUSE_MS)])
        try:
            ready_at, ready = app.wait_for(gui.READY, 300)  # the layout script's own mark: every view drawn
            sizes = gui.view_sizes(ready)

            def four_drawn(shot):
                views = gui.find_views(shot, sizes)
                return len(views) == 4 and all(drawn(shot, rect) for rect in views)
            last, shot_at = shoot_until(app, str(tmp_path / "last_step.png"), four_drawn,
                                        ready_at + PAUSE_MS / 1000 - 4)
            views = gui.find_views(last, sizes)
            app.wait_for(gui.PLAYED, 120)  # ParaView's test player pressed "First Frame"

            def moved_and_drawn(shot):
                return (sum(gui.changed(last, shot, rect) > 0.005 for rect in views) >= 2
                        and all(drawn(shot, rect) for rect in views))
            first, _ = shoot_until(app, str(tmp_path / "first_step.png"), moved_and_drawn, time.monotonic() + 60)
        finally:
            app.close()
    assert shot_at - ready_at < PAUSE_MS / 1000 - 2, "the first screenshot came after the time had moved"
    assert "Welcome" not in "".join(app.lines)
    assert len(views) == 4, f"found {views} on the screen, expected the 4 views of {ready.group(0)}"
    for rect in views:  # each view holds a picture: not one colour, not nearly empty
        for shot in (last, first):
            assert drawn(shot, rect), (rect, gui.content(shot, rect))
    moved = [gui.changed(last, first, rect) for rect in views]
    assert sum(m > 0.005 for m in moved) >= 2, moved  # network and filters are drawn at the step shown
    # nothing left modified by the layout script (ExtractBlock's selector widget marked its filter modified, at the
    # start and again when the time moved): the Apply button is not lit
    assert not gui.apply_lit(last) and not gui.apply_lit(first)


def test_file_open_and_apply_in_a_plain_paraview_shows_the_layers_side_by_side_in_dots(runs_root, tmp_path):
    """File > Open of a run's run.tview in a plain ParaView (`tview paraview --plain RUN`), then Apply, pressed by
    ParaView's test player, and nothing else: the network's layers lie side by side before ParaView's own camera
    (they lay on top of each other: a square of slabs), each channel a dot (one-pixel points were hardly seen),
    coloured by a statistic every layer has at the first step, where the time starts (no NaN yellow)."""
    with gui.desktop() as display:
        apply = gui.apply_events(str(tmp_path), 6000)
        app = gui.ParaViewGUI(str(runs_root / "demo"), display, ["--test-script=" + apply], plain=True)
        try:
            app.wait_for(gui.PLAYED, 180)  # Apply pressed
            shot, _ = shoot_until(app, str(tmp_path / "plain.png"),
                                  lambda s: gui.solid(s, gui.render_area(s)) > 300, time.monotonic() + 30)
        finally:
            app.close()
    view = gui.render_area(shot)
    x, y, w, h, _ = gui.drawn_box(shot, view)
    assert w > 1.4 * h, (w, h)  # side by side (stacked slabs seen from above: 200 x 197 pixels)
    assert gui.solid(shot, (view[0], view[1], view[2] - 150, view[3])) > 300  # dots (one-pixel points: 0)
    assert gui.yellow(shot, view) == 0  # coloured by a statistic measured at step 0 (grad_channel_norm: 864 NaN px)


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory):
    """The demo with one NaN pixel in rank 1's input at step 40 of 100 (it spreads through DDP)."""
    from tview.demo import run_demo
    path = str(tmp_path_factory.mktemp("nan") / "run")
    run_demo(path, ranks=2, steps=100, every=2, snapshot_every=10, fault="nan")
    return path


def ready_line(run: str, tmp_path, name: str) -> str:
    """`tview paraview RUN`'s ready line, a screenshot of the window kept as tmp_path/name."""
    with gui.desktop() as display:
        app = gui.ParaViewGUI(run, display)
        try:
            _, ready = app.wait_for(gui.READY, 300)
            time.sleep(3)
            app.screenshot(str(tmp_path / name))
        finally:
            app.close()
    return ready.string


def test_tview_paraview_opens_a_run_at_its_first_nan_and_says_so_a_clean_run_at_its_last_step(nan_run, runs_root,
                                                                                              tmp_path):
    import tview
    from tview.render import scene
    onset = scene.first_nonfinite(tview.open_run(nan_run))
    assert onset is not None and onset[0] < 100 - 2
    line = ready_line(nan_run, tmp_path, "nan.png")
    assert f"step {onset[0]} shown" in line, line  # it opened at the last step: everything NaN there
    assert f"first NaN/Inf at step {onset[0]}, rank {onset[1]}" in line, line
    clean = tview.open_run(str(runs_root / "demo"))
    line = ready_line(str(runs_root / "demo"), tmp_path, "clean.png")
    assert f"step {scene.time_steps(clean)[-1]} shown" in line and "NaN" not in line, line
