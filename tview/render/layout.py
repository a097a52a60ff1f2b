"""Where things go in a picture or a scene: tiling images on a grid, channels on stacked 3D slabs (numpy only)."""

from __future__ import annotations

import math

import numpy as np


def tile(images: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """Lay [n, h, w] images out on a grid `columns` wide with `gap` NaN cells between them."""
    images = np.asarray(images, dtype=np.float64)
    n, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), np.nan)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = images[i]
    return out


def slab_sides(channels: list[int]) -> list[int]:
    """The side (in glyphs) of each layer's square slab of channels."""
    return [math.ceil(math.sqrt(max(c, 1))) for c in channels]


def network_positions(channels: list[int], spacing: float = 1.0, by_size: bool = False) -> np.ndarray:
    """3D positions of every channel: each layer a square slab of points, layers stacked along z, 3 spacings
    apart, or (by_size) half the larger of two neighbouring slabs' sides apart (at least 3), so that seen from
    an angle no slab reaches into the next."""
    sides = slab_sides(channels)
    gaps = [max(3.0, 0.5 * max(a, b)) if by_size else 3.0 for a, b in zip(sides, sides[1:])]
    heights = np.concatenate([[0.0], np.cumsum(gaps)]) * spacing
    pts = []
    for z, c, side in zip(heights, channels, sides):
        idx = np.arange(c)
        pts.append(np.stack([(idx % side - (side - 1) / 2) * spacing,
                             (idx // side - (side - 1) / 2) * spacing,
                             np.full(c, z)], axis=1))
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def tile_origins(n: int, h: int, w: int, columns: int, gap: int = 1) -> list[tuple[int, int]]:
    """Top-left (row, col) of each of `n` h x w tiles on tile()'s grid, `columns` wide, `gap` cells apart."""
    columns = max(1, min(columns, n))
    return [((i // columns) * (h + gap), (i % columns) * (w + gap)) for i in range(n)]


def tile_gaps(n: int, h: int, w: int, columns: int, gap: int = 1) -> np.ndarray:
    """True on the cells of tile()'s grid that belong to no tile (the gaps between them)."""
    return np.isnan(tile(np.zeros((n, h, w)), columns, gap))


def camera_axes(direction, view_up) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ahead, up, right) unit vectors of a camera looking along `direction` with `view_up` (made square to it)."""
    ahead = np.asarray(direction, np.float64) / (np.linalg.norm(direction) or 1.0)
    up = np.asarray(view_up, np.float64) - np.dot(view_up, ahead) * ahead
    up /= np.linalg.norm(up) or 1.0
    return ahead, up, np.cross(ahead, up)


def fit_distance(points, focal, direction, view_up, view_angle: float, aspect: float, fill: float = 0.9) -> float:
    """How far from `focal` (backwards along `direction`) a perspective camera of vertical `view_angle` degrees on
    a view `aspect` (width / height) wide must stand for every point to lie within `fill` of the view's half
    height and half width. Points nearer the camera look bigger, so these decide, not a bounding sphere (fitted
    to a sphere, the top slab of a network seen from above reached the picture's edge and its dots were cut)."""
    ahead, up, right = camera_axes(direction, view_up)
    rel = np.asarray(points, np.float64).reshape(-1, 3) - np.asarray(focal, np.float64)
    toward = -(rel @ ahead)  # how much nearer the camera than the focal point
    t = math.tan(math.radians(view_angle) / 2) * fill
    need = np.maximum(toward + np.abs(rel @ up) / t, toward + np.abs(rel @ right) / (t * aspect))
    return float(max(need.max(initial=0.0), 1e-6))


def projected(points, focal, direction, view_up, distance: float, view_angle: float, aspect: float) -> np.ndarray:
    """Where points land in the picture of that camera: (x, y) from -1 to 1 across its width and height."""
    ahead, up, right = camera_axes(direction, view_up)
    rel = np.asarray(points, np.float64).reshape(-1, 3) - np.asarray(focal, np.float64)
    depth = distance + rel @ ahead
    t = math.tan(math.radians(view_angle) / 2)
    return np.stack([(rel @ right) / (depth * t * aspect), (rel @ up) / (depth * t)], axis=1)


def fit_camera(points, direction, view_up, view_angle: float, aspect: float, fill: float = 0.9,
               rounds: int = 4) -> tuple[np.ndarray, float]:
    """(focal point, distance) of a camera looking along `direction` that frames every point within `fill` of the
    picture with the points' picture centred: fitted from the middle of their box, then panned by where the middle
    of their picture fell and fitted again (perspective: a few rounds converge)."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    focal = (pts.min(axis=0) + pts.max(axis=0)) / 2
    _, up, right = camera_axes(direction, view_up)
    t = math.tan(math.radians(view_angle) / 2)
    for _ in range(rounds):
        d = fit_distance(pts, focal, direction, view_up, view_angle, aspect, fill)
        xy = projected(pts, focal, direction, view_up, d, view_angle, aspect)
        mid_x, mid_y = (xy.min(axis=0) + xy.max(axis=0)) / 2
        focal = focal + right * (mid_x * d * t * aspect) + up * (mid_y * d * t)
    return focal, fit_distance(pts, focal, direction, view_up, view_angle, aspect, fill)
