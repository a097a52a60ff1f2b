"""tview's ParaView views, built with paraview.simple on a tview Run Reader: network, trajectory, filters,
feature maps, layer x step field, rank x step field, and four of them linked in one layout. Each view names
what it shows (run, layer, statistic, rank, the step of the data) in a caption that follows the time.
Shared by render_view.py (pvbatch, `tview render`) and layout_state.py (the GUI, `tview paraview`)."""

import math
import os

from paraview import servermanager as sm
from paraview import simple as pv

PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tview_plugin.py")
pv.LoadPlugin(PLUGIN)  # its proxies join paraview.simple, by label; it imports the tview package beside it
from tview.render.views import DEFAULT_ARRAY, LAYOUT, RANK_MODES, VIEWS, rank_field_array  # noqa: E402,F401

INK = [0.1, 0.1, 0.1]             # text and axes on the white background
NAN_COLOR = [1.0, 0.0, 1.0]       # magenta: on no preset used here (ParaView's NaN yellow is Viridis' and Inferno's
#                                   top, a NaN read as the largest value); gaps are never NaN (hidden cells)
TICKS = "%.3g"                    # one number style for every colour bar's ticks and ends
GUI = os.environ.get("TVIEW_GUI") == "1"  # inside ParaView's GUI (tview paraview): the GUI sizes the views
BLOCK_OF = {"network": "network", "trajectory": "trajectories", "filters": "filters", "feature_maps": "feature_maps",
            "field": "fields", "rank_field": "rank_fields"}


def open_run(manifest, rank=0, example=0, **properties):
    """A tview Run Reader on the run (its time steps published). Properties given here are set before the reader
    joins the pipeline: in the GUI it then starts applied (no Apply button lit)."""
    reader = pv.tviewRunReader(FileName=manifest, Rank=rank, ProbeExample=example, **properties)
    reader.UpdatePipelineInformation()
    return reader


def first_nonfinite(manifest):
    """(step, rank) where NaN/Inf first appeared in the run (tview.render.scene.first_nonfinite), None if never."""
    from tview.render import scene
    from tview.store.reader import open_run as open_tview_run
    run = open_tview_run(manifest, skip_bad_shards=True)
    try:
        return scene.first_nonfinite(run)
    finally:
        run.close()


def steps_of(reader):
    return list(reader.TimestepValues) if reader.TimestepValues else []


def available(reader, prop):
    """The names a reader's array selection offers (Layers, Statistics, Blocks)."""
    info = reader.GetProperty(prop + "Info")
    return list(info[::2]) if info else []


def blocks_for(views, array=None, statistics=()):
    """The reader's Blocks and Statistics for `views`: only the blocks they show, only the statistics they colour
    by (`statistics`: those the run has, for a rank field's default)."""
    stats = [array] if array else []
    stats += [DEFAULT_ARRAY[name] for name in views if name in ("network", "field") and not array]
    if "rank_field" in views and not array:
        stats.append(rank_field_array(list(statistics)))
    if "network" in views and array and "field" in views:  # the layout: the network keeps its own colouring
        stats.append(DEFAULT_ARRAY["network"])
    return {"Blocks": sorted({BLOCK_OF[name] for name in views}), "Statistics": sorted(set(stats))}


def read_blocks(reader, views, array=None):
    """Have the reader build only the blocks (and read only the statistics) the views show."""
    for name, value in blocks_for(views, array, available(reader, "Statistics")).items():
        setattr(reader, name, value)
    reader.UpdatePipelineInformation()


def run_meta(manifest):
    """Layer lists from the run's manifest (plain JSON)."""
    import json
    with open(manifest) as f:
        return json.load(f)


def new_view(size, view=None):
    view = view or pv.CreateRenderView()
    if not GUI:
        view.ViewSize = list(size)
    view.OrientationAxesVisibility = 0
    if hasattr(view, "UseColorPaletteForBackground"):
        view.UseColorPaletteForBackground = 0
    view.Background = [1.0, 1.0, 1.0]
    return view


def font(view, big=False):
    """Text size in pixels for a view's size: small views (the GUI's four) get small text."""
    height = view.ViewSize[1]
    return (15 if big else 13) if height >= 500 else (13 if big else 11)


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


def draw_labels(view, labels, size=13, justification="Center", backed=False):
    """Each label as a text actor anchored at its 3D point (billboard: faces the camera, fixed pixel size); with
    backed, on a white patch (a label over lines stays readable)."""
    for text, xyz in labels:
        display = pv.Show(pv.Text(Text=text), view)
        display.TextPropMode = "Billboard 3D Text"
        display.BillboardPosition = list(xyz)
        display.FontSize = size
        display.Color = INK
        display.Justification = justification
        if backed:
            display.BackgroundColor = [1.0, 1.0, 1.0, 0.85]
    return [text for text, _ in labels]


def spaced(labels, axis, pixels_per_unit, gap):
    """The labels, thinned along x (axis 0) or y (axis 1) so that neighbours are at least `gap(text)` pixels
    apart: labels never overlap, whatever the view's size."""
    lines = {}  # labels on one line (the same other coordinate) are thinned together
    for text, xyz in labels:
        lines.setdefault(round(xyz[1 - axis], 6), []).append((text, xyz))
    kept = []
    for line in lines.values():
        last = None
        for text, xyz in sorted(line, key=lambda lab: lab[1][axis]):
            if last is None or (xyz[axis] - last[1][axis]) * pixels_per_unit >= gap(last[0]):
                kept.append((text, xyz))
                last = (text, xyz)
    return kept


def text_width(text, size):
    return 0.62 * size * len(text)


def caption(view, source, template, size=None):
    """A caption in the upper left corner, filled by the tview Caption filter from the data `source` shows (so
    the step it names is the data's own, and follows the time)."""
    text = pv.tviewCaption(Input=source, Template=template)
    display = pv.Show(text, view)
    display.WindowLocation = "Upper Left Corner"
    display.Justification = "Left"
    display.FontSize = size or font(view)
    display.Color = INK
    return text


def fixed_caption(view, text, location="Lower Left Corner", size=None):
    display = pv.Show(pv.Text(Text=text), view)
    display.WindowLocation = location
    display.FontSize = size or font(view)
    display.Color = INK
    return text


BAR_PIXELS = 96  # the right margin a vertical colour bar with its ticks and title takes


def style_bar(bar, view, title):
    """A vertical bar in the right margin, ticks and ends in one number style."""
    bar.Title, bar.ComponentTitle = title, ""
    bar.TitleColor, bar.LabelColor = INK, INK
    bar.TitleFontSize, bar.LabelFontSize = font(view), font(view) - 1
    bar.AutomaticLabelFormat, bar.LabelFormat, bar.RangeLabelFormat = 0, TICKS, TICKS
    bar.WindowLocation = "Any Location"
    bar.Orientation = "Vertical"
    width, height = view.ViewSize
    bar.Position = [1.0 - (BAR_PIXELS - 8) / max(width, 1), 0.14]
    bar.ScalarBarLength = 0.66
    bar.ScalarBarThickness = 12
    return bar


def color(display, view, array, association="POINTS", preset="Cool to Warm", symmetric=False, log=False,
          title=None, follow=True):
    """Colour by `array` with a preset, a scalar bar in ink (a NaN swatch on it), NaN in NAN_COLOR. `follow`: the
    range follows the data at every step of the time slider (set once, a range taken at the last step hides the
    others: all NaN there, every earlier value at an end of the bar); a symmetric or log range is set once."""
    pv.ColorBy(display, (association, array))
    lut = pv.GetColorTransferFunction(array)
    lut.ApplyPreset(preset, True)
    lut.NanColor = NAN_COLOR
    display.RescaleTransferFunctionToDataRange(False, True)
    if follow and not symmetric and not log:
        lut.AutomaticRescaleRangeMode = "Clamp and update every timestep"
    low, high = lut.RGBPoints[0], lut.RGBPoints[-4]
    if symmetric:
        m = max(abs(low), abs(high)) or 1.0
        lut.RescaleTransferFunction(-m, m)
    display.SetScalarBarVisibility(view, True)
    bar = style_bar(pv.GetScalarBar(lut, view), view, title or array)
    bar.DrawNanAnnotation, bar.NanAnnotation = 1, "NaN"
    if log and not symmetric and low > 0 and high > 100 * low:  # spans decades: colours spread over the logarithm
        lut.MapControlPointsToLogSpace()
        lut.UseLogScale = 1
        bar.UseCustomLabels, bar.CustomLabels = 1, decades(low, high)  # a tick per power of ten, no 2s and 5s
    return lut


def decades(low, high):
    """The powers of ten between low and high (> 0), every other one when there are more than 6."""
    first, last = math.ceil(math.log10(low)), math.floor(math.log10(high))
    every = 1 if last - first < 6 else 2
    return [10.0 ** k for k in range(first, last + 1, every)]


def extract(reader, selectors):
    """The reader's block at selectors[0] ('/Root/filters/conv2') through the tview Block filter (not ExtractBlock:
    its selector widget marks it modified in the GUI, and the Apply button was lit with nothing to apply)."""
    part = pv.tviewBlock(Input=reader, Path=selectors[0])
    part.UpdatePipeline(pv.GetAnimationScene().TimeKeeper.Time)
    return part


def frame_2d(view, data_bounds, margins):
    """Look straight down z with a parallel projection so that the data fills the view less `margins` (left,
    right, bottom, top, in pixels); returns the pixels per world unit."""
    width, height = view.ViewSize
    left, right, bottom, top = margins
    dw = (data_bounds[1] - data_bounds[0]) or 1.0
    dh = (data_bounds[3] - data_bounds[2]) or 1.0
    units = max(dw / max(width - left - right, 20), dh / max(height - bottom - top, 20))  # world units per pixel
    cx = (data_bounds[0] + data_bounds[1]) / 2 + (right - left) / 2 * units
    cy = (data_bounds[2] + data_bounds[3]) / 2 + (top - bottom) / 2 * units
    side = max(dw, dh)
    view.CameraParallelProjection = 1
    view.CameraFocalPoint = [cx, cy, 0.0]
    view.CameraPosition = [cx, cy, 10.0 * side]
    view.CameraViewUp = [0.0, 1.0, 0.0]
    view.CameraParallelScale = height * units / 2
    return 1.0 / units


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


DOT_PIXELS = 20  # room for a dot's radius and a label's half height beyond a point


def points_of(source):
    """The points of the data `source` shows, as an n x 3 numpy array (fetched: for a network, a few thousand)."""
    import numpy as np
    from vtkmodules.util.numpy_support import vtk_to_numpy
    parts = [vtk_to_numpy(leaf.GetPoints().GetData()) for leaf in _leaves(sm.Fetch(source))
             if hasattr(leaf, "GetPoints") and leaf.GetPoints() is not None]
    return np.concatenate(parts).reshape(-1, 3) if parts else np.zeros((0, 3))


def box_2d(points):
    """(xmin, xmax, ymin, ymax) of points (n x 3)."""
    import numpy as np
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return [p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()] if len(p) else [0.0, 1.0, 0.0, 1.0]


def frame_3d(view, points, margin=None):
    """Aim the camera (its direction and up kept) so that every point (the data's, labels' anchors) lies `margin`
    pixels or more inside the picture (default: below the caption's two lines), the picture centred, as near as
    that allows. ParaView's ResetCamera fits a sphere around the data's box, which put the nearest slab of a tall
    network at the picture's edge."""
    import numpy as np

    from tview.render.layout import fit_camera
    if not len(points):
        return
    margin = 2 * font(view) + DOT_PIXELS if margin is None else margin
    ahead = np.subtract(view.CameraFocalPoint, view.CameraPosition)
    ahead /= np.linalg.norm(ahead) or 1.0
    width, height = view.ViewSize
    fill = max(0.5, 1.0 - margin / max(min(width, height) / 2, 1))
    aspect = width / height if width > 0 and height > 0 else 1.0  # a GUI view not laid out yet: square
    focal, distance = fit_camera(points, ahead, view.CameraViewUp, view.CameraViewAngle, aspect, fill)
    view.CameraFocalPoint = list(focal)
    view.CameraPosition = list(focal - ahead * distance)  # ParaView sets the clipping range at each render


def network(reader, view, array, layer=None, size=None):
    """Each channel a dot on its layer's slab, the slabs side by side facing the camera (straight down z, as
    ParaView's default camera), named above; dots as wide as 0.7 of the channel spacing, from 3 to 12 pixels."""
    part = extract(reader, ["/Root/network"])
    display = pv.Show(part, view)
    display.SetRepresentationType("Points")
    display.RenderPointsAsSpheres = 1
    if size:
        size_by(display, part, size)
    color(display, view, array, preset="Viridis (matplotlib)")
    text, anchored = font(view), labels_of(part)
    pixels = frame_2d(view, box_2d([*points_of(part), *(xyz for _, xyz in anchored)]),
                      (DOT_PIXELS, BAR_PIXELS, 1.6 * text + DOT_PIXELS, 3.4 * text + DOT_PIXELS))
    display.PointSize = max(3, min(12, round(0.7 * pixels)))
    labels = spaced(anchored, 0, pixels, lambda t: text_width(t, text) + 6)  # a small view: some names left out
    draw_labels(view, labels, size=text, justification="Center")
    caption(view, part, f"network: {array}" + (f" (size: {size})" if size else "") + "\n{run} · {ranks} · step {step}")
    return labels


def _nice_steps(high):
    out = [0]
    k = 1
    while k <= high:
        out += [s for s in (k, 2 * k, 5 * k) if s <= high]
        k *= 10
    return out


def _away_from_centre(labels, data_bounds, push=0.08):
    """Each label moved outwards in x and y from the middle of the data and in front of it: a path's name beside
    its end, drawn over the paths (the camera looks down z)."""
    centre = [(data_bounds[2 * k] + data_bounds[2 * k + 1]) / 2 for k in range(3)]
    size = max(data_bounds[2 * k + 1] - data_bounds[2 * k] for k in range(3)) or 1.0
    out = []
    for text, xyz in labels:
        d = [xyz[k] - centre[k] for k in range(3)]
        norm = math.sqrt(sum(v * v for v in d)) or 1.0
        moved = [xyz[k] + push * size * d[k] / norm for k in range(2)]
        out.append((text, (moved[0], moved[1], data_bounds[5])))  # as near the camera (on +z) as any path
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
        lut = color(display, view, "log_step", preset="Viridis (matplotlib)", title="training step", follow=False)
        high = 10 ** lut.RGBPoints[-4] - 1
        lut.Annotations = [v for s in _nice_steps(high) for v in (f"{math.log10(s + 1):.6g}", str(s))]
        bar = pv.GetScalarBar(lut, view)
        bar.DrawTickLabels, bar.DrawTickMarks, bar.AddRangeLabels, bar.DrawAnnotations = 0, 0, 0, 1
    labels = _away_from_centre(labels_of(part), bounds(part))
    draw_labels(view, labels, size=font(view), justification="Center", backed=True)
    view.CameraPosition, view.CameraFocalPoint, view.CameraViewUp = [0, 0, 10], [0, 0, 0], [0, 1, 0]
    view.ResetCamera()
    caption(view, part, "weight trajectories" + (f" of {layer}" if layer else "") + " (PCA)\n{run} · {ranks}")
    return labels


def filters(reader, view, array, layer):
    part, _ = show_grid(reader, view, [f"/Root/filters/{layer}"], array, symmetric=True)
    labels = labels_of(part)
    rows = [lab for lab in labels if lab[1][0] < 0]
    columns = [lab for lab in labels if lab[1][0] >= 0]
    size = font(view)
    left = max([text_width(t, size) for t, _ in rows] or [0]) + 12
    pixels = frame_2d(view, bounds(part), (left, BAR_PIXELS, 12, 3.2 * size + 2 * size))
    rows = spaced(rows, 1, pixels, lambda t: 1.2 * size)
    columns = spaced(columns, 0, pixels, lambda t: text_width(t, size) + 6)
    draw_labels(view, rows, size=size, justification="Right")
    draw_labels(view, columns, size=size)
    caption(view, part, f"filters of {layer} ({array})\n" "{run} · {ranks} · snapshot of step {step}")
    return rows + columns


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
    tiles, pictures = labels_of(part), labels_of(picture)
    b, p = bounds(part), bounds(picture)
    size = font(view)
    pixels = frame_2d(view, [min(b[0], p[0]), b[1], b[2], b[3]], (10, BAR_PIXELS, 10, 3.4 * size + 2 * size))
    tiles = spaced(tiles, 0, pixels, lambda t: text_width(t, size) + 4) if len(tiles) > 1 else tiles
    draw_labels(view, tiles + pictures, size=size)
    caption(view, part, f"feature maps of {layer} ({array})\n" "{run} · {ranks} · snapshot of step {step}")
    return tiles + pictures


def field(reader, view, array, layer=None, block="fields"):
    part, _ = show_grid(reader, view, [f"/Root/{block}/" + (f"{array}/{layer}" if layer else array)], array,
                        preset="Inferno (matplotlib)", log=True)
    labels = labels_of(part)
    rows = [lab for lab in labels if block != "rank_fields" or lab[0].startswith("rank ")]
    size = font(view)
    left = max([text_width(t, size) for t, _ in rows] or [0]) + 14
    pixels = frame_2d(view, bounds(part), (left, BAR_PIXELS, 3.2 * size + 8, 3.4 * size + 2 * size))
    rows = spaced(rows, 1, pixels, lambda t: 1.15 * size)
    draw_labels(view, rows, size=size, justification="Right")
    grid = view.AxesGrid
    grid.Visibility = 1
    grid.XTitle, grid.YTitle, grid.ZTitle = "training step", "", ""
    grid.AxesToLabel = 2  # the step axis only (the edge at min y); rows carry the layer names
    grid.FacesToRender = 4  # the xy plane below the picture
    grid.ShowGrid = 0
    grid.XTitleColor, grid.XLabelColor, grid.GridColor = INK, INK, INK
    grid.YLabelColor, grid.YTitleColor = INK, INK
    grid.XTitleFontSize, grid.XLabelFontSize = size, size - 1
    grid.UseCustomBounds, grid.CustomBounds = 1, list(bounds(part))  # the field's, whatever else the view shows
    if block == "rank_fields":
        caption(view, part, f"{array} of {{layer}}, a row per rank\n{{run}} · every rank · all steps")
    else:
        caption(view, part, f"{array}" + (f" per channel of {layer}" if layer else " per layer")
                + "\n{run} · {ranks} · all steps")
    return rows


def rank_field(reader, view, array, layer=None):
    """One layer statistic of one layer (the reader's RankFieldLayer), a row per rank: the rank_fields block,
    whose rows every process read for its own ranks."""
    return field(reader, view, array, None, "rank_fields")


VIEW_BUILDERS = {"network": network, "trajectory": trajectory, "filters": filters, "feature_maps": feature_maps,
                 "field": field, "rank_field": rank_field}
assert set(VIEW_BUILDERS) == set(VIEWS), "tview.render.views.VIEWS and this script's views differ"


def default_array(reader, name, array):
    if array:
        return array
    if name == "rank_field":
        return rank_field_array(available(reader, "Statistics"))
    return DEFAULT_ARRAY[name]


def show(reader, view, name, array=None, layer=None, size=None):
    """One view into `view` (the network's glyphs sized by `size`, a point array, if given); returns the labels."""
    array = default_array(reader, name, array)
    if name == "network":
        return network(reader, view, array, layer, size)
    return VIEW_BUILDERS[name](reader, view, array, layer)


def default_layer(manifest, name, layer):
    """The layer a per-layer view shows: the one asked for, else the manifest's first of its kind."""
    if layer or name not in ("filters", "feature_maps"):
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


def layout(reader, manifest, size, array=None, filter_layer=None, note=""):
    """Network, layer x step field, filters and trajectories in one layout of four linked views (one time), on a
    reader set up with blocks_for(LAYOUT, array); `note` (where NaN/Inf first appeared) under the network."""
    lay, first = _layout_of_four()
    half = [size[0] // 2, size[1] // 2]
    views, labels = [], []
    for hint in (3, 4, 5, 6):  # every view in place (and sized) before any shows data
        view = new_view(half, first if hint == 3 else None)
        if pv.GetLayout(view) is None:
            pv.AssignViewToLayout(view=view, layout=lay, hint=hint)
        views.append(view)
    if not GUI:
        lay.SetSize(*size)
    for view, name in zip(views, LAYOUT):
        layer = default_layer(manifest, name, filter_layer if name == "filters" else None)
        labels += show(reader, view, name, array if name == "field" else None, layer)
    if note:
        fixed_caption(views[0], note)
    for view in views:
        pv.Render(view)  # every view drawn now, not when the time first changes
    return lay, views, labels
