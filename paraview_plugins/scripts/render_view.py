"""pvbatch script behind `tview render`: one view of a run to a PNG, through the tview plugin.

    pvbatch paraview_plugins/scripts/render_view.py RUN OUT.png [--view network|trajectory|filters|feature_maps|field]
                           [--step N] [--array NAME] [--rank R] [--layer NAME] [--size 1000x800]
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # paraview_plugins/
VIEWS = {  # view -> (block, representation, default array)
    "network": ("network", "Points", "act_channel_zero_frac"),
    "trajectory": ("trajectories", "Surface", "step"),
    "filters": ("filters", "Surface", "weight"),
    "feature_maps": ("feature_maps", "Volume", "activation"),
    "field": ("fields", "Surface", "act_zero_frac"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--view", choices=sorted(VIEWS), default="network")
    ap.add_argument("--step", type=float, default=None)
    ap.add_argument("--array", default=None)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--layer", default=None, help="the one layer whose filters/feature maps/trajectory to show")
    ap.add_argument("--size", default="1000x800")
    a = ap.parse_args()
    from paraview import simple as pv

    pv.LoadPlugin(os.path.join(HERE, "tview_plugin.py"))  # its proxies join paraview.simple, by label
    manifest = a.run if a.run.endswith("run.tview") else os.path.join(a.run, "run.tview")
    reader = pv.tviewRunReader(FileName=manifest)
    reader.Rank = a.rank
    block, representation, default_array = VIEWS[a.view]
    array = a.array or default_array
    if a.view == "field":
        reader.Statistics = [array]
    reader.UpdatePipelineInformation()
    steps = list(reader.TimestepValues) if reader.TimestepValues else []
    if not steps:
        print(f"tview render: {a.run}: nothing to render (no readable recorded step)", file=sys.stderr)
        sys.stdout.flush()
        os._exit(2)
    step = steps[-1] if a.step is None else max([s for s in steps if s <= a.step] or steps[:1])
    selector = f"/Root/{block}" + (f"/{a.layer}" if a.layer and a.view != "network" else "")
    part = pv.ExtractBlock(Input=reader, Selectors=[selector])
    width, height = (int(v) for v in a.size.split("x"))
    view = pv.CreateRenderView()
    view.ViewSize = [width, height]
    view.ViewTime = step
    view.OrientationAxesVisibility = 0
    display = pv.Show(part, view)
    display.SetRepresentationType(representation)
    pv.ColorBy(display, ("POINTS", array))
    display.RescaleTransferFunctionToDataRange(True, False)
    display.SetScalarBarVisibility(view, True)
    if a.view == "network":
        display.PointSize = 9
        display.RenderPointsAsSpheres = 1
        view.CameraPosition = [30, -40, 25]
        view.CameraViewUp = [0, 0, 1]
    elif a.view == "trajectory":
        display.LineWidth = 3
    text = pv.Text(Text=f"{os.path.basename(os.path.dirname(os.path.abspath(manifest)))}: {a.view} ({array}) "
                        f"at step {int(step)}, rank {a.rank}")
    pv.Show(text, view)
    view.ResetCamera()
    pv.Render(view)
    pv.SaveScreenshot(a.out, view, ImageResolution=[width, height])
    print(f"wrote {a.out}: {a.view} at step {int(step)}")
    sys.stdout.flush()  # and end normally: sys.exit after rendering trips a GLX error at teardown


if __name__ == "__main__":
    main()
