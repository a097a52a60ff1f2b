"""Where things go in a picture or a scene: tiling images on a grid, channels on stacked 3D slabs (numpy only)."""

from __future__ import annotations

import math

import numpy as np


def tile(images: np.ndarray, columns: int) -> np.ndarray:
    """Lay [n, h, w] images out on a grid `columns` wide with one NaN gap between them."""
    images = np.asarray(images, dtype=np.float64)
    n, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = images[i]
    return out


def network_positions(channels: list[int], spacing: float = 1.0) -> np.ndarray:
    """3D positions of every channel: each layer a square slab of points, layers stacked along z."""
    pts = []
    for z, c in enumerate(channels):
        side = math.ceil(math.sqrt(max(c, 1)))
        idx = np.arange(c)
        pts.append(np.stack([(idx % side - (side - 1) / 2) * spacing,
                             (idx // side - (side - 1) / 2) * spacing,
                             np.full(c, z * 3.0 * spacing)], axis=1))
    return np.concatenate(pts) if pts else np.zeros((0, 3))
