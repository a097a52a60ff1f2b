"""tview's ParaView views, built with paraview.simple on a tview Run Reader: network, trajectory, filters,
feature maps (tiles or volume), layer x step field, rank x step field, and four of them linked in one layout.
Shared by render_view.py (pvbatch, `tview render`) and layout_state.py (the GUI, `tview paraview`)."""

import math
import os

from paraview import servermanager as sm
from paraview import simple as pv

PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tview_plugin.py")
INK = [0.1, 0.1, 0.1]             # text and axes on the white background
NAN_COLOR = [1.0, 1.0, 0.0]       # ParaView's NaN yellow, kept: a real NaN shows; gaps are never NaN (hidden cells)
DEFAULT_ARRAY = {"network": "act_channel_zero_frac", "trajectory": "log_step", "filters": "weight",
                 "feature_maps": "activation", "feature_volume": "activation", "field": "grad_norm",
                 "rank_field": "grad_norm"}
LAYOUT = ("network", "field", "filters", "trajectory")
RANK_MODES = ("one", "all", "mean", "spread", "std")  # the reader's RankMode values (tview.render.scene.RANK_MODES)


def open_run(manifest, rank=0, example=0, volumes=False):
    """The plugin loaded and a tview Run Reader on the run (its time steps published)."""
    pv.LoadPlugin(PLUGIN)  # its proxies join paraview.simple, by label
    reader = pv.tviewRunReader(FileName=manifest)
    reader.Rank = rank
    reader.ProbeExample = example
    reader.FeatureVolumes = int(volumes)
    reader.UpdatePipelineInformation()
    return reader


def steps_of(reader):
    return list(reader.TimestepValues) if reader.TimestepValues else []


def run_meta(manifest):
    """Layer lists from the run's manifest (plain JSON: no tview import needed)."""
    import json
    with open(manifest) as f:
        return json.load(f)


GUI = os.environ.get("TVIEW_GUI") == "1"  # inside ParaView's GUI (tview paraview): the GUI sizes the views


def new_view(size, view=None):
    view = view or pv.CreateRenderView()
    if not GUI:
        view.ViewSize = list(size)
    view.OrientationAxesVisibility = 0
    if hasattr(view, "UseColorPaletteForBackground"):
        view.UseColorPaletteForBackground = 0
    view.Background = [1.0, 1.0, 1.0]
    return view


def _leaves(data):
    if data is None:
        return []
    if data.IsA("vtkMultiBlockDataSet"):
        return [leaf for i in range(data.GetNumberOfBlocks()) for leaf in _leaves(data.GetBlock(i))]
    return [data]


def labels_of(source):
    """(text, xyz) of every label the reader attached to the blocks of `source` (field data)."""
    out = []
    for leaf in _leaves(sm.Fetch(source)):
        texts, xyz = leaf.GetFieldData().GetAbstractArray("label_text"), leaf.GetFieldData().GetArray("label_xyz")
        if texts is None or xyz is None:
            continue
        out += [(texts.GetValue(i), xyz.GetTuple3(i)) for i in range(texts.GetNumberOfValues())]
    return out


def draw_labels(view, labels, size=15, justification="Center"):
    """Each label as a text actor anchored at its 3D point (billboard: faces the camera, fixed pixel size)."""
    shown = []
    for text, xyz in labels:
        display = pv.Show(pv.Text(Text=text), view)
        display.TextPropMode = "Billboard 3D Text"
        display.BillboardPosition = list(xyz)
        display.FontSize = size
        display.Color = INK
        display.Justification = justification
        shown.append(text)
    return shown


def caption(view, text, location="Upper Left Corner", size=16):
    display = pv.Show(pv.Text(Text=text), view)
    display.WindowLocation = location
    display.FontSize = size
    display.Color = INK
    return text


def color(display, view, array, association="POINTS", preset="Cool to Warm", symmetric=False, log=False,
          title=None):
    """Colour by `array` with a preset, a scalar bar in ink, NaN in ParaView's yellow."""
    pv.ColorBy(display, (association, array))
    lut = pv.GetColorTransferFunction(array)
    lut.ApplyPreset(preset, True)
    lut.NanColor = NAN_COLOR
    display.RescaleTransferFunctionToDataRange(False, True)
    low, high = lut.RGBPoints[0], lut.RGBPoints[-4]
    if symmetric:
        m = max(abs(low), abs(high)) or 1.0
        lut.RescaleTransferFunction(-m, m)
    elif log and low > 0 and high > 100 * low:  # spans decades: colours spread over the logarithm
        lut.MapControlPointsToLogSpace()
        lut.UseLogScale = 1
    display.SetScalarBarVisibility(view, True)
    bar = pv.GetScalarBar(lut, view)
    bar.Title, bar.ComponentTitle = title or array, ""
    bar.TitleColor, bar.LabelColor = INK, INK
    bar.TitleFontSize, bar.LabelFontSize = 16, 14
    return lut


def extract(reader, selectors):
    part = pv.ExtractBlock(Input=reader, Selectors=list(selectors))
    part.UpdatePipeline(pv.GetAnimationScene().TimeKeeper.Time)
    return part


def frame_2d(view, labels, data_bounds, margin=(0.12, 0.04, 0.10, 0.08)):
    """Look straight down z with a parallel projection at the data and its labels (left, right, bottom, top
    margins as fractions of the larger side)."""
    xs = [data_bounds[0], data_bounds[1]] + [xyz[0] for _, xyz in labels]
    ys = [data_bounds[2], data_bounds[3]] + [xyz[1] for _, xyz in labels]
    side = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
    x0, x1 = min(xs) - margin[0] * side, max(xs) + margin[1] * side
    y0, y1 = min(ys) - margin[2] * side, max(ys) + margin[3] * side
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    width, height = view.ViewSize
    view.CameraParallelProjection = 1
    view.CameraFocalPoint = [cx, cy, 0.0]
    view.CameraPosition = [cx, cy, 10.0 * side]
    view.CameraViewUp = [0.0, 1.0, 0.0]
    view.CameraParallelScale = max((y1 - y0) / 2, (x1 - x0) / 2 * height / width)


def backdrop(view):
    """A plane in the background colour behind everything, filling the view. Under `mpirun pvbatch` IceT
    composites only the screen area the data covers, which clipped the labels drawn beside the data."""
    import numpy as np
    cam = view.GetActiveCamera()
    pos, focal = np.array(cam.GetPosition()), np.array(cam.GetFocalPoint())
    ahead = focal - pos
    dist = float(np.linalg.norm(ahead)) or 1.0
    ahead /= dist
    right = np.cross(ahead, np.array(cam.GetViewUp()))
    right /= np.linalg.norm(right) or 1.0
    up = np.cross(right, ahead)
    far = 3.0 * dist  # behind the data: a camera is set at least the scene's radius away from its focus
    half_h = (cam.GetParallelScale() if cam.GetParallelProjection()
              else far * math.tan(math.radians(cam.GetViewAngle()) / 2))
    width, height = view.ViewSize
    half_w = half_h * width / max(height, 1)
    origin = pos + ahead * far - right * half_w * 1.2 - up * half_h * 1.2
    plane = pv.Plane(Origin=list(origin), Point1=list(origin + 2.4 * half_w * right),
                     Point2=list(origin + 2.4 * half_h * up))
    display = pv.Show(plane, view)
    display.ColorArrayName = ["POINTS", ""]  # a solid colour
    display.AmbientColor = display.DiffuseColor = list(view.Background)
    display.Ambient, display.Diffuse, display.Specular = 1.0, 0.0, 0.0
    return plane


def bounds(source):
    return source.GetDataInformation().GetBounds()


def show_grid(reader, view, selectors, array, **style):
    part = extract(reader, selectors)
    display = pv.Show(part, view)
    display.SetRepresentationType("Surface")
    display.Interpolation = "Flat"
    display.Ambient, display.Diffuse = 1.0, 0.0  # flat colours: no lighting on a picture of numbers
    color(display, view, array, association="CELLS", **style)
    return part, display


def size_by(display, part, array):
    """Glyphs (shaded spheres) sized by a point array, from 0.1 to 0.45 of the slab spacing."""
    display.SetRepresentationType("Point Gaussian")
    display.ShaderPreset = "Sphere"
    display.GaussianRadius = 0.45
    display.ScaleByArray = 1
    display.SetScaleArray = ["POINTS", array]
    low, high = part.PointData[array].GetRange()
    display.ScaleTransferFunction.Points = [low, 0.2, 0.5, 0.0, high if high > low else low + 1, 1.0, 0.5, 0.0]


def network(reader, view, array, layer=None, size=None):
    part = extract(reader, ["/Root/network"])
    display = pv.Show(part, view)
    display.SetRepresentationType("Points")
    display.PointSize = 10
    display.RenderPointsAsSpheres = 1
    if size:
        size_by(display, part, size)
    color(display, view, array, preset="Viridis (matplotlib)")
    labels = labels_of(part)
    draw_labels(view, labels, justification="Right")
    view.CameraPosition = [34, -46, 28]
    view.CameraFocalPoint = [0, 0, 12]
    view.CameraViewUp = [0, 0, 1]
    view.ResetCamera()
    return labels


def _nice_steps(high):
    out = [0]
    k = 1
    while k <= high:
        out += [s for s in (k, 2 * k, 5 * k) if s <= high]
        k *= 10
    return out


def trajectory(reader, view, array, layer=None):
    part = extract(reader, ["/Root/trajectories" + (f"/{layer}" if layer else "")])
    display = pv.Show(part, view)
    display.SetRepresentationType("Surface")
    display.LineWidth = 3
    display.RenderLinesAsTubes = 1
    if array != "log_step":
        color(display, view, array, preset="Viridis (matplotlib)")
    else:  # log10(step + 1) coloured, the bar annotated in steps: a step axis for the paths
        lut = color(display, view, "log_step", preset="Viridis (matplotlib)", title="training step")
        high = 10 ** lut.RGBPoints[-4] - 1
        lut.Annotations = [v for s in _nice_steps(high) for v in (f"{math.log10(s + 1):.6g}", str(s))]
        bar = pv.GetScalarBar(lut, view)
        bar.DrawTickLabels, bar.AddRangeLabels, bar.DrawAnnotations = 0, 0, 1
    labels = labels_of(part)
    draw_labels(view, labels, justification="Left")
    view.ResetCamera()
    return labels


def filters(reader, view, array, layer):
    part, _ = show_grid(reader, view, [f"/Root/filters/{layer}"], array, symmetric=True)
    labels = labels_of(part)
    draw_labels(view, [lab for lab in labels if lab[1][0] < 0], size=13, justification="Right")  # filters
    draw_labels(view, [lab for lab in labels if lab[1][0] >= 0], size=13)  # input channels
    frame_2d(view, labels, bounds(part), margin=(0.06, 0.25, 0.04, 0.06))
    return labels


def feature_maps(reader, view, array, layer):
    part, _ = show_grid(reader, view, [f"/Root/feature_maps/{layer}"], array, preset="Inferno (matplotlib)")
    picture = extract(reader, ["/Root/feature_maps/input"])
    if picture.GetDataInformation().GetNumberOfCells():
        shown = pv.Show(picture, view)
        shown.SetRepresentationType("Surface")
        shown.Ambient, shown.Diffuse = 1.0, 0.0
        pv.ColorBy(shown, ("CELLS", "input"))
        lut = pv.GetColorTransferFunction("input")
        lut.ApplyPreset("Grayscale", True)
        shown.RescaleTransferFunctionToDataRange(False, True)
        shown.SetScalarBarVisibility(view, False)
    labels = labels_of(part) + labels_of(picture)
    draw_labels(view, labels, size=13)
    b, p = bounds(part), bounds(picture)
    frame_2d(view, labels, [min(b[0], p[0]), b[1], b[2], b[3]], margin=(0.03, 0.22, 0.04, 0.06))
    return labels


def feature_volume(reader, view, array, layer):
    part = extract(reader, [f"/Root/feature_volumes/{layer}"])
    display = pv.Show(part, view)
    display.SetRepresentationType("Volume")
    color(display, view, array, preset="Inferno (matplotlib)")
    view.CameraPosition, view.CameraFocalPoint, view.CameraViewUp = [1.0, -1.6, 1.4], [0.0, 0.0, 0.0], [0, 0, 1]
    view.ResetCamera()  # seen from a corner: width, height and the channel axis all show
    return []


def field(reader, view, array, layer=None, block="fields"):
    part, _ = show_grid(reader, view, [f"/Root/{block}/" + (f"{array}/{layer}" if layer else array)], array,
                        preset="Inferno (matplotlib)", log=True)
    labels = labels_of(part)
    rows = [lab for lab in labels if block != "rank_fields" or lab[0].startswith("rank ")]
    draw_labels(view, rows, size=14, justification="Right")
    draw_labels(view, [lab for lab in labels if lab not in rows], size=15)  # a rank field's layer, above it
    grid = view.AxesGrid
    grid.Visibility = 1
    grid.XTitle, grid.YTitle, grid.ZTitle = "training step", "", ""
    grid.AxesToLabel = 2  # the step axis only (the edge at min y); rows carry the layer names
    grid.FacesToRender = 4  # the xy plane below the picture
    grid.ShowGrid = 0
    grid.XTitleColor, grid.XLabelColor, grid.GridColor = INK, INK, INK
    grid.YLabelColor, grid.YTitleColor = INK, INK
    grid.XTitleFontSize, grid.XLabelFontSize = 16, 14
    grid.UseCustomBounds, grid.CustomBounds = 1, list(bounds(part))  # the field's, whatever else the view shows
    frame_2d(view, labels, bounds(part), margin=(0.10, 0.16, 0.10, 0.04))
    return labels


def rank_field(reader, view, array, layer=None):
    """One layer statistic of one layer (the reader's RankFieldLayer), a row per rank: the rank_fields block,
    whose rows every process read for its own ranks."""
    return field(reader, view, array, None, "rank_fields")


VIEWS = {"network": network, "trajectory": trajectory, "filters": filters, "feature_maps": feature_maps,
         "feature_volume": feature_volume, "field": field, "rank_field": rank_field}


def show(reader, view, name, array=None, layer=None, size=None):
    """One view into `view` (the network's glyphs sized by `size`, a point array, if given); returns the labels."""
    if name == "network":
        return network(reader, view, array or DEFAULT_ARRAY[name], layer, size)
    return VIEWS[name](reader, view, array or DEFAULT_ARRAY[name], layer)


def default_layer(manifest, name, layer):
    """The layer a per-layer view shows: the one asked for, else the manifest's first of its kind."""
    if layer or name not in ("filters", "feature_maps", "feature_volume"):
        return layer
    meta = run_meta(manifest)
    names = meta.get("filter_layers" if name == "filters" else "probe_layers", [])
    return (names[-1] if name == "filters" else names[0]) if names else None  # filters: the deepest


def _layout_of_four():
    """The GUI's own layout (its render view kept for the first cell), or a new one in pvbatch; split in four."""
    try:
        lay, first = pv.GetLayout(), pv.GetActiveView()
    except RuntimeError:  # pvbatch: no view nor layout yet
        lay, first = None, None
    if lay is None or first is None:
        lay, first = pv.CreateLayout("tview"), None
    lay.SplitHorizontal(0, 0.5)
    lay.SplitVertical(1, 0.5)
    lay.SplitVertical(2, 0.5)
    return lay, first


def layout(reader, manifest, size, array=None, filter_layer=None):
    """Network, layer x step field, filters and trajectories in one layout of four linked views (one time)."""
    reader.Statistics = [DEFAULT_ARRAY["network"], array or DEFAULT_ARRAY["field"]]
    reader.UpdatePipelineInformation()
    lay, first = _layout_of_four()
    half = [size[0] // 2, size[1] // 2]
    views, labels = [], []
    for hint in (3, 4, 5, 6):  # every view in place before any shows data (the GUI hung otherwise)
        view = new_view(half, first if hint == 3 else None)
        if pv.GetLayout(view) is None:
            pv.AssignViewToLayout(view=view, layout=lay, hint=hint)
        views.append(view)
    for view, name in zip(views, LAYOUT):
        layer = default_layer(manifest, name, filter_layer if name == "filters" else None)
        labels += show(reader, view, name, array if name == "field" else None, layer)
        caption(view, name if name != "field" else f"field: {array or DEFAULT_ARRAY['field']}", size=14)
    if not GUI:
        lay.SetSize(*size)
    return lay, views, labels
