"""ParaView state script behind `tview paraview RUN`: the run (from TVIEW_RUN) open in the tview reader and
four linked views in one layout (network, layer x step field, filters, trajectories) sharing the time slider.
Also usable from the GUI's Python shell: set TVIEW_RUN, then run this file."""

import os
import sys

from paraview import simple as pv

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.environ.get("TVIEW_SCRIPTS", "")
sys.path.insert(0, HERE)
import tview_views as tv  # noqa: E402

manifest = os.environ["TVIEW_RUN"]
reader = tv.open_run(manifest)
scene = pv.GetAnimationScene()
scene.UpdateAnimationUsingDataTimeSteps()
steps = tv.steps_of(reader)
if steps:
    scene.AnimationTime = steps[-1]
    layout, views, labels = tv.layout(reader, manifest, [1600, 1000])
    pv.SetActiveView(views[0])
    pv.SetActiveSource(reader)
    print(f"tview: {manifest}: {len(steps)} recorded steps in 4 linked views; labels: {len(labels)}")
else:
    print(f"tview: {manifest}: no readable recorded step yet (File > Reload Files when the run has some)")
