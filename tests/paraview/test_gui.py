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
