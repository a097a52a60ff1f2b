"""ParaView's desktop GUI as a person starts it (`tview paraview RUN`, under Xvfb with the openbox window
manager): the four linked views are drawn without a click, and moving the time changes what they show."""

import time

import pytest

from tests.paraview import gui

pytestmark = pytest.mark.slow
PAUSE_MS = 15000  # from the layout's ready mark to the "First Frame" press: room for the first screenshot


@pytest.fixture(scope="module", autouse=True)
def need_programs():
    missing = gui.missing_programs()
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: scripts/test.sh installs them (paraview, xvfb, openbox, "
                    f"imagemagick)")


def test_tview_paraview_opens_four_drawn_views_that_follow_the_time(runs_root, tmp_path):
    run = str(runs_root / "demo")
    with gui.desktop() as display:
        app = gui.ParaViewGUI(run, display, ["--test-script=" + gui.first_frame_events(str(tmp_path), PAUSE_MS)])
        try:
            ready_at, ready = app.wait_for(gui.READY, 300)  # the layout script's own mark: every view drawn
            time.sleep(2.0)  # Qt paints the views once the script has returned
            last = app.screenshot(str(tmp_path / "last_step.png"))
            shot_at = time.monotonic()
            app.wait_for(gui.PLAYED, 120)  # ParaView's test player pressed "First Frame"
            time.sleep(3.0)
            first = app.screenshot(str(tmp_path / "first_step.png"))
        finally:
            app.close()
    assert shot_at - ready_at < PAUSE_MS / 1000 - 2, "the first screenshot came after the time had moved"
    assert "Welcome" not in "".join(app.lines)
    views = gui.find_views(last, gui.view_sizes(ready))
    assert len(views) == 4, f"found {views} on the screen, expected the 4 views of {ready.group(0)}"
    for rect in views:  # each view holds a picture: not one colour, not nearly empty
        for shot in (last, first):
            drawn, colours = gui.content(shot, rect)
            assert drawn > 0.02 and colours > 20, (rect, drawn, colours)
    moved = [gui.changed(last, first, rect) for rect in views]
    assert sum(m > 0.005 for m in moved) >= 2, moved  # network and filters are drawn at the step shown
