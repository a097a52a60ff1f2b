"""ParaView GUI script behind `tview paraview RUN`: the run (from TVIEW_RUN) open in the tview reader and four
linked views in one layout (network, layer x step field, filters, trajectories) sharing the time toolbar, which
goes through the run's recorded steps. Prints "tview: ready: ..." once every view is drawn.
Also usable from the GUI's Python shell: set TVIEW_RUN and TVIEW_SCRIPTS (this folder), then run this file."""

import os
import sys

from paraview import simple as pv

# the GUI runs --script files without __file__: the launcher names this folder in TVIEW_SCRIPTS
HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.environ.get("TVIEW_SCRIPTS", "")
sys.path.insert(0, HERE)
import tview_views as tv  # noqa: E402

manifest = os.environ["TVIEW_RUN"]
reader = tv.open_run(manifest, **tv.blocks_for(tv.LAYOUT))
steps = tv.steps_of(reader)
if steps:
    scene = pv.GetAnimationScene()
    scene.UpdateAnimationUsingDataTimeSteps()  # the time toolbar: the recorded steps
    scene.AnimationTime = steps[-1]
    layout, views, labels = tv.layout(reader, manifest, [1600, 1000])
    pv.SetActiveView(views[0])
    pv.SetActiveSource(reader)
    sizes = " ".join(f"{w}x{h}" for w, h in (v.ViewSize for v in views))
    print(f"tview: ready: {manifest}: {len(steps)} recorded steps, step {steps[-1]:.0f} shown in 4 linked views "
          f"({sizes} pixels); labels: {len(labels)}", flush=True)
else:
    print(f"tview: ready: {manifest}: no readable recorded step yet (File > Reload Files when the run has some)",
          flush=True)
