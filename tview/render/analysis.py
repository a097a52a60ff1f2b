"""Pure analysis of recorded series: health findings, gradient noise scale, filter-similarity groups.

Only numpy: used by the Dash app, the ParaView plugin and tests alike, on plain arrays.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# Thresholds of the health findings (documented in the dashboard's overview page).
EXPLODE_FACTOR = 1e3     # recent gradient norm this many times the early one
VANISH_FACTOR = 1e-3     # recent gradient norm this fraction of the early one ...
VANISH_ABS = 1e-7        # ... or below this absolute value
DEAD_ZERO_FRAC = 0.99    # a channel is dead when its activation zero fraction stays at or above this
DIVERGE_FACTOR = 2.0     # a rank's recent loss this many times the median rank's (or below 1/it)
SLOW_FACTOR = 1.25       # a rank's median step time this many times the median rank's
LAG_FRACTION = 0.05      # a rank whose last step is behind the furthest by more than this share


@dataclass
class Finding:
    """One health finding: what kind, how severe ('error', 'warning'), and a sentence for people."""

    kind: str
    severity: str
    message: str
    rank: int | None = None
    layer: str | None = None
    step: int | None = None


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style smoothing: a debiased exponential moving average that skips non-finite values.
    weight 0 returns the values unchanged; 0.99 smooths hard."""
    values = np.asarray(values, dtype=np.float64)
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), not {weight}")
    if weight == 0 or len(values) == 0:
        return values.copy()
    out = np.empty_like(values)
    last, debias = 0.0, 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            last = weight * last + (1 - weight) * v
            debias = weight * debias + (1 - weight)
        out[i] = last / debias if debias > 0 else np.nan
    return out


def window(n: int, share: float = 0.1, least: int = 3) -> int:
    """How many points make the 'early' or 'recent' window of a series of n points."""
    return int(min(n, max(least, round(n * share))))


def _finite_median(values: np.ndarray, axis=0) -> np.ndarray:
    values = np.where(np.isfinite(values), values, np.nan)
    with warnings.catch_warnings():  # an all-NaN slice is a NaN median, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def gradient_findings(steps: np.ndarray, grad_norm: np.ndarray, layers: list[str],
                      rank: int | None = None) -> list[Finding]:
    """Exploding or vanishing gradients per layer: the recent median norm against the early one.
    grad_norm: [steps, layers]; layers without gradients (all NaN) are skipped."""
    grad_norm = np.asarray(grad_norm, dtype=np.float64)
    found = []
    if grad_norm.ndim != 2 or grad_norm.shape[0] < 2:
        return found
    w = window(grad_norm.shape[0])
    early, recent = _finite_median(grad_norm[:w]), _finite_median(grad_norm[-w:])
    for i, layer in enumerate(layers[:grad_norm.shape[1]]):
        e, r = early[i], recent[i]
        if not (np.isfinite(e) and np.isfinite(r)):
            continue
        at = int(steps[-1])
        if e > 0 and r > EXPLODE_FACTOR * e:
            found.append(Finding("exploding_gradients", "error",
                                 f"{layer}: gradient norm grew {r / e:.3g}x (from {e:.3g} to {r:.3g})",
                                 rank, layer, at))
        elif r < VANISH_ABS or (e > 0 and r < VANISH_FACTOR * e):
            found.append(Finding("vanishing_gradients", "warning",
                                 f"{layer}: gradient norm fell to {r:.3g} (from {e:.3g})", rank, layer, at))
    return found


def dead_channels(zero_frac: np.ndarray, threshold: float = DEAD_ZERO_FRAC) -> np.ndarray:
    """Indices of channels whose activation zero fraction stays >= threshold over the recent window.
    zero_frac: [steps, channels]; rows that are all NaN (not recorded that step) are ignored."""
    zero_frac = np.asarray(zero_frac, dtype=np.float64)
    if zero_frac.ndim != 2 or zero_frac.shape[1] == 0:
        return np.zeros(0, dtype=np.int64)
    rows = zero_frac[np.isfinite(zero_frac).any(axis=1)]
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    recent = rows[-window(len(rows)):]
    with np.errstate(invalid="ignore"):
        dead = np.all(np.where(np.isfinite(recent), recent >= threshold, False), axis=0)
    return np.flatnonzero(dead)


def rank_findings(loss: dict[int, np.ndarray], step_time: dict[int, np.ndarray],
                  last_step: dict[int, int | None]) -> list[Finding]:
    """Ranks that diverge (recent loss far from the median rank's), run slow, or lag behind."""
    found = []
    recent = {r: float(_finite_median(v[-window(len(v)):])) for r, v in loss.items() if len(v)}
    recent = {r: v for r, v in recent.items() if np.isfinite(v)}
    if len(recent) >= 2:
        mid = float(np.median(list(recent.values())))
        for r, v in recent.items():
            if mid > 0 and v > 0 and (v > DIVERGE_FACTOR * mid or v < mid / DIVERGE_FACTOR):
                found.append(Finding("rank_diverges", "warning",
                                     f"rank {r}: recent loss {v:.4g} against the median rank's {mid:.4g}", rank=r))
    times = {r: float(_finite_median(v)) for r, v in step_time.items() if len(v)}
    times = {r: v for r, v in times.items() if np.isfinite(v)}
    if len(times) >= 2:
        mid = float(np.median(list(times.values())))
        for r, v in times.items():
            if mid > 0 and v > SLOW_FACTOR * mid:
                found.append(Finding("slow_rank", "warning",
                                     f"rank {r}: median step time {v * 1e3:.1f} ms, {v / mid:.2f}x the median rank's",
                                     rank=r))
    known = {r: s for r, s in last_step.items() if s is not None}
    if len(last_step) >= 2 and known:
        furthest = max(known.values())
        for r, s in sorted(last_step.items()):
            if s is None:
                found.append(Finding("rank_lags", "error", f"rank {r}: nothing recorded", rank=r))
            elif furthest - s > max(1, LAG_FRACTION * furthest):
                found.append(Finding("rank_lags", "warning",
                                     f"rank {r}: last step {s}, behind the furthest rank ({furthest})", rank=r, step=s))
    return found


def nonfinite_findings(first: dict[int, dict[str, dict[str, int]]]) -> list[Finding]:
    """From {rank: run.first_nonfinite(rank)}: for each rank, the first step and layer with NaN/Inf."""
    found = []
    for rank, where in sorted(first.items()):
        layers = where.get("layers", {})
        if layers:
            step = min(layers.values())
            names = [n for n, s in layers.items() if s == step]
            found.append(Finding("nonfinite", "error",
                                 f"rank {rank}: NaN/Inf first at step {step} in {names[0]}"
                                 + (f" (and {len(names) - 1} more layers that step)" if len(names) > 1 else ""),
                                 rank, names[0], step))
        for name, step in sorted(where.get("scalars", {}).items(), key=lambda kv: kv[1]):
            found.append(Finding("nonfinite", "error", f"rank {rank}: {name} became NaN/Inf at step {step}",
                                 rank, None, step))
    return found


def gradient_noise_scale(local_sq_norm: np.ndarray, global_sq_norm: np.ndarray, local_batch: float,
                         world_size: int, smoothing: float = 0.9) -> np.ndarray:
    """Simple gradient noise scale B_simple = tr(Sigma) / |G|^2 per step (McCandlish et al. 2018, App. A).

    local_sq_norm: [ranks, steps] squared norm of each rank's own gradient (batch b = local_batch);
    global_sq_norm: [steps] squared norm of the all-reduced gradient (batch B = b * world_size).
    The two unbiased estimates |G|^2 = (B|G_B|^2 - b|G_b|^2)/(B - b) and
    tr(Sigma) = (|G_b|^2 - |G_B|^2)/(1/b - 1/B) are smoothed separately (EMA) before the ratio,
    as the paper advises; steps where the ratio is not positive are NaN.
    """
    local_sq_norm = np.atleast_2d(np.asarray(local_sq_norm, dtype=np.float64))
    global_sq_norm = np.asarray(global_sq_norm, dtype=np.float64)
    if world_size < 2:
        raise ValueError("the gradient noise scale needs at least 2 ranks (a small and a large batch)")
    b, big = float(local_batch), float(local_batch) * world_size
    small = _finite_mean(local_sq_norm, axis=0)
    g2 = (big * global_sq_norm - b * small) / (big - b)
    trace = (small - global_sq_norm) / (1 / b - 1 / big)
    g2_s, trace_s = ema(g2, smoothing), ema(trace, smoothing)
    with np.errstate(all="ignore"):
        out = trace_s / g2_s
    out[~(np.isfinite(out) & (g2_s > 0) & (trace_s > 0))] = np.nan
    return out


def _finite_mean(values: np.ndarray, axis=0) -> np.ndarray:
    finite = np.isfinite(values)
    with np.errstate(all="ignore"):
        return np.where(finite.any(axis=axis), np.where(finite, values, 0).sum(axis=axis) / finite.sum(axis=axis), np.nan)


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
