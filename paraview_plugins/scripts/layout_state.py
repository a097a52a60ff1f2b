"""ParaView GUI script behind `tview paraview RUN`: the run (from TVIEW_RUN) open in the tview reader and four
linked views in one layout (network, layer x step field, filters, trajectories) sharing the time toolbar, which
goes through the run's recorded steps. It opens at the last step, or where NaN/Inf first appeared (that step and
rank, said under the network and in its output line). Prints "tview: ready: ..." once every view is drawn.
Also usable from the GUI's Python shell: set TVIEW_RUN and TVIEW_SCRIPTS (this folder), then run this file."""

import os
import sys

from paraview import simple as pv

# the GUI runs --script files without __file__: the launcher names this folder in TVIEW_SCRIPTS
HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.environ.get("TVIEW_SCRIPTS", "")
sys.path.insert(0, HERE)
import tview_views as tv  # noqa: E402

manifest = os.environ["TVIEW_RUN"]
onset = tv.first_nonfinite(manifest)  # (step, rank) of the first NaN/Inf, or None
reader = tv.open_run(manifest, rank=onset[1] if onset else 0, **tv.blocks_for(tv.LAYOUT))
steps = tv.steps_of(reader)
if steps:
    from tview.render.scene import onset_note, opening_step  # the plugin has imported its tview
    start, note = opening_step(steps, onset), onset_note(onset)
    scene = pv.GetAnimationScene()
    scene.UpdateAnimationUsingDataTimeSteps()  # the time toolbar: the recorded steps
    scene.AnimationTime = start
    layout, views, labels = tv.layout(reader, manifest, [1600, 1000], note=note)
    pv.SetActiveView(views[0])
    pv.SetActiveSource(reader)
    sizes = " ".join(f"{w}x{h}" for w, h in (v.ViewSize for v in views))
    print(f"tview: ready: {manifest}: {len(steps)} recorded steps, step {start:.0f} shown in 4 linked views "
          f"({sizes} pixels); labels: {len(labels)}" + (f"; {note}" if note else ""), flush=True)
else:
    print(f"tview: ready: {manifest}: no readable recorded step yet (File > Reload Files when the run has some)",
          flush=True)
