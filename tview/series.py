"""Smoothing of recorded series, shared by tview.render (charts) and tview.diagnose (findings): numpy only."""

from __future__ import annotations

import numpy as np


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
