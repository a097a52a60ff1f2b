"""Pure analysis of recorded series: smoothing, windows, filter-similarity groups (health findings and the
gradient noise scale are tview.diagnose's).

Only numpy: used by the Dash app, the ParaView plugin and tests alike, on plain arrays.
"""

from __future__ import annotations

import numpy as np

from tview.series import ema, window  # noqa: F401  (re-exported: charts and tests use them from here)


def similarity_groups(activations: np.ndarray, threshold: float = 0.9) -> list[list[int]]:
    """Filters whose probe activations correlate (Pearson >= threshold), merged transitively, as
    TensorView's pruning candidates. activations: [N, C, ...] feature maps of the probe batch.
    Returns groups of 2 or more channel indices, largest first; constant channels join no group."""
    a = np.asarray(activations, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"activations must be [N, C, ...], got shape {a.shape}")
    c = a.shape[1]
    profiles = np.moveaxis(a, 1, 0).reshape(c, -1)
    corr = pearson_matrix(profiles)
    parent = list(range(c))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    ii, jj = np.nonzero(np.triu(np.nan_to_num(corr, nan=-2.0) >= threshold, k=1))
    for i, j in zip(ii, jj):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(c):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def similarity_layout(activations: np.ndarray, threshold: float) -> tuple[np.ndarray, list[list[int]]]:
    """(coords [C, 3], groups): each filter placed by PCA of its probe activations [N, C, ...], and
    the similarity groups (see similarity_groups)."""
    a = np.asarray(activations, dtype=np.float64)
    return pca3(np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)), similarity_groups(a, threshold)


def pearson_matrix(profiles: np.ndarray) -> np.ndarray:
    """Pearson correlation between the rows of [C, M]; rows with zero variance give NaN."""
    x = np.asarray(profiles, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1))
    with np.errstate(all="ignore"):
        corr = (x @ x.T) / np.outer(norm, norm)
    corr[norm == 0, :] = np.nan
    corr[:, norm == 0] = np.nan
    return np.clip(corr, -1.0, 1.0)


def pca3(points: np.ndarray) -> np.ndarray:
    """The first three principal coordinates of [n, d] points (zeros where d or n is smaller)."""
    x = np.asarray(points, dtype=np.float64)
    x = np.nan_to_num(x - x.mean(axis=0, keepdims=True))
    out = np.zeros((x.shape[0], 3))
    if x.shape[0] < 2:
        return out
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(3, len(s))
    out[:, :k] = u[:, :k] * s[:k]
    return out
