"""Framing a 3D scene (tview.render.layout.fit_distance): every point inside the picture, with the margin asked."""

import itertools
import math

import numpy as np

from tview.render.layout import fit_camera, fit_distance, network_positions, projected

NETWORK_CAMERA = dict(direction=np.array([0, 0, 12]) - np.array([34, -46, 28]), view_up=[0, 0, 1], view_angle=30.0)


def test_every_slab_of_a_tall_network_seen_from_above_lies_inside_the_picture():
    points = network_positions([16] * 20)  # the 1024-rank synthetic run's network: 20 slabs of 16 channels
    lo, hi = points.min(axis=0), points.max(axis=0)
    focal = (lo + hi) / 2
    d = fit_distance(points, focal, aspect=1000 / 800, fill=0.9, **NETWORK_CAMERA)
    xy = projected(points, focal, distance=d, aspect=1000 / 800, **NETWORK_CAMERA)
    assert np.abs(xy).max() <= 0.9 + 1e-9
    assert math.isclose(np.abs(xy).max(), 0.9, rel_tol=1e-6)  # fitted, not pushed further back than it needs
    # a camera fitted to the bounding sphere (what ParaView's ResetCamera does) puts the top slab, nearest the
    # camera, at the picture's edge: its dots were cut there
    sphere = np.linalg.norm(hi - lo) / 2 / math.sin(math.radians(15))
    top = projected(points[points[:, 2] == hi[2]], focal, distance=sphere, aspect=1000 / 800, **NETWORK_CAMERA)
    assert np.abs(top[:, 1]).max() > 0.98


def test_a_wide_box_is_fitted_by_its_width():
    corners = np.array(list(itertools.product((-10, 10), (-1, 1), (-1, 1))), dtype=float)
    camera = dict(direction=[0, 1, 0], view_up=[0, 0, 1], view_angle=30.0)
    d = fit_distance(corners, [0, 0, 0], aspect=2.0, fill=0.8, **camera)
    xy = projected(corners, [0, 0, 0], distance=d, aspect=2.0, **camera)
    assert math.isclose(np.abs(xy[:, 0]).max(), 0.8, rel_tol=1e-6) and np.abs(xy[:, 1]).max() < 0.8


def test_the_fitted_picture_is_centred_with_the_margin_on_its_tightest_side():
    points = network_positions([16] * 20)
    focal, d = fit_camera(points, aspect=1000 / 800, fill=0.9, **NETWORK_CAMERA)
    xy = projected(points, focal, distance=d, aspect=1000 / 800, **NETWORK_CAMERA)
    top, bottom = xy[:, 1].max(), xy[:, 1].min()
    assert math.isclose(max(top, -bottom), 0.9, rel_tol=1e-6)
    assert abs(top + bottom) < 0.01  # as much room above as below (fitted from the box's middle: not so)
    plain = projected(points, (points.min(0) + points.max(0)) / 2, aspect=1000 / 800, **NETWORK_CAMERA,
                      distance=fit_distance(points, (points.min(0) + points.max(0)) / 2, aspect=1000 / 800,
                                            fill=0.9, **NETWORK_CAMERA))
    assert abs(plain[:, 1].max() + plain[:, 1].min()) > 0.05


def test_paraviews_default_camera_sees_every_layer_of_the_network_apart():
    """The network as ParaView's default camera (views.NETWORK_CAMERA: down -z, +y up; `tview render` and `tview
    paraview` look the same way) shows it, fitted: every slab inside the picture, no two slabs' pictures overlapping
    (the slabs stacked along z, seen so, covered each other)."""
    from tview.render.scene import network_layout
    from tview.render.views import NETWORK_CAMERA
    counts = (16,) * 20
    points, _ = network_layout(counts, tuple(f"block{i // 2}.conv" for i in range(20)))
    camera = dict(NETWORK_CAMERA, view_angle=30.0)
    focal, d = fit_camera(points, aspect=1000 / 800, fill=0.9, **camera)
    xy = projected(points, focal, distance=d, aspect=1000 / 800, **camera)
    assert np.abs(xy).max() <= 0.9 + 1e-6
    boxes = [(p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()) for p in np.split(xy, np.cumsum(counts)[:-1])]
    assert all(a[1] < b[0] or b[1] < a[0] or a[3] < b[2] or b[3] < a[2] for i, a in enumerate(boxes)
               for b in boxes[i + 1:])
