"""Gradient noise scale B_simple per layer and for the whole net, with where it is undefined and why, and the
critical batch size it implies next to the batch size in use (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training", App. A; used by adaptive data-parallel training such as Pollux / AdaptDL)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tview.series import ema

WHY_NO_LOCAL = "no local gradient norm at this step on some rank"
WHY_NONFINITE = "a gradient norm is not finite"
WHY_G2 = "|G|^2 estimate <= 0 (the gradient is below its noise at this smoothing)"
WHY_TRACE = "tr(Sigma) estimate <= 0 (ranks' gradients agree more than sampling allows)"


@dataclass
class NoiseScale:
    """B_simple per step (NaN where undefined, `why` says why at that step), or `reason` when it is undefined
    everywhere; critical_batch: the median of the defined values over the last half of the steps (B_crit ~
    B_simple), batch: the batch size in use (per rank x ranks)."""

    steps: np.ndarray
    b_simple: np.ndarray
    why: list[str]
    reason: str | None = None
    batch: float | None = None
    critical_batch: float | None = None
    layers: dict[str, "NoiseScale"] = field(default_factory=dict)

    @property
    def defined(self) -> np.ndarray:
        return np.isfinite(self.b_simple)

    def undefined_spans(self) -> list[tuple[int, int, str]]:
        """(first step, last step, why) of each run of consecutive undefined steps with one reason: what a chart
        shades and labels."""
        spans: list[tuple[int, int, str]] = []
        last = -2  # index of the previous undefined step
        for i, (step, why) in enumerate(zip(self.steps, self.why)):
            if not why:
                continue
            if spans and spans[-1][2] == why and last == i - 1:
                spans[-1] = (spans[-1][0], int(step), why)
            else:
                spans.append((int(step), int(step), why))
            last = i
        return spans

    def gaps(self) -> dict[str, int]:
        """How many steps are undefined for each reason."""
        out: dict[str, int] = {}
        for w in self.why:
            if w:
                out[w] = out.get(w, 0) + 1
        return out


def undefined(reason: str, batch: float | None = None) -> NoiseScale:
    return NoiseScale(np.zeros(0, dtype=np.int64), np.zeros(0), [], reason, batch)


def noise_scale_from_norms(local_sq: np.ndarray, global_sq: np.ndarray, local_batch: float, world_size: int,
                           smoothing: float = 0.9) -> tuple[np.ndarray, list[str]]:
    """(B_simple per step, why each NaN step is undefined) from local_sq [ranks, steps], each rank's squared norm
    of its own gradient (batch b), and global_sq [steps], the all-reduced one (batch B = b x world_size).
    |G|^2 = (B|G_B|^2 - b|G_b|^2)/(B - b) and tr(Sigma) = (|G_b|^2 - |G_B|^2)/(1/b - 1/B) are smoothed
    (EMA, skipping undefined steps) before their ratio."""
    local_sq = np.atleast_2d(np.asarray(local_sq, dtype=np.float64))
    complete = np.isfinite(local_sq).all(axis=0)
    small = np.where(complete, np.nanmean(np.where(np.isfinite(local_sq), local_sq, np.nan), axis=0)
                     if local_sq.size else np.nan, np.nan)
    return noise_scale_from_mean(small, global_sq, local_batch, world_size, smoothing)


def noise_scale_from_mean(small: np.ndarray, global_sq: np.ndarray, local_batch: float, world_size: int,
                          smoothing: float = 0.9) -> tuple[np.ndarray, list[str]]:
    """noise_scale_from_norms from small [steps], the mean over the ranks of their squared local norms (NaN where
    some rank has no finite one): what a read rank by rank keeps."""
    small = np.asarray(small, dtype=np.float64)
    global_sq = np.asarray(global_sq, dtype=np.float64)
    b, big = float(local_batch), float(local_batch) * world_size
    complete = np.isfinite(small)
    finite = complete & np.isfinite(global_sq)
    with np.errstate(all="ignore"):
        g2 = np.where(finite, (big * global_sq - b * small) / (big - b), np.nan)
        trace = np.where(finite, (small - global_sq) / (1 / b - 1 / big), np.nan)
        g2_s, trace_s = ema(g2, smoothing), ema(trace, smoothing)
        out = trace_s / g2_s
    why = []
    for t in range(len(out)):
        why.append("" if finite[t] and g2_s[t] > 0 and trace_s[t] > 0 else
                   WHY_NO_LOCAL if not complete[t] else WHY_NONFINITE if not finite[t] else
                   WHY_G2 if not g2_s[t] > 0 else WHY_TRACE)
    out[np.array([bool(w) for w in why], dtype=bool)] = np.nan
    return out, why


def _batch(run, max_points) -> float | None:
    try:
        _, examples = run.scalar("examples", run.ranks[0], max_points=max_points)
    except KeyError:
        return None
    examples = np.asarray(examples, dtype=np.float64)
    examples = examples[np.isfinite(examples) & (examples > 0)]
    return float(np.median(examples)) if len(examples) else None


def _global_norms(run, max_points):
    """(steps, float64 [steps, layers]) of the all-reduced gradient norm (rank 0's shard), or None."""
    from tview.diagnose.checks.common import matrix
    return matrix(run, "grad_norm", run.ranks[0], max_points)


@dataclass
class _RankSums:
    """Sums over the ranks of the squared local gradient norms at the global norm's steps, read one rank's
    shard at a time (memory: one rank's rows, never every rank's): per layer [steps, layers] and of the
    whole network (over `params`) [steps]; NaN where a rank's norm is not finite. present: every rank so far
    recorded the step; seen: some rank's norm is finite there."""

    params: list[int]
    per_layer: np.ndarray
    total: np.ndarray
    present: np.ndarray
    seen: np.ndarray

    @classmethod
    def empty(cls, steps: int, layers: int, params: list[int]) -> "_RankSums":
        return cls(params, np.zeros((steps, layers)), np.zeros(steps), np.ones(steps, bool), np.zeros(steps, bool))

    def add(self, on_grid: np.ndarray, local: np.ndarray) -> None:
        """One rank's local norms [its rows on the grid, layers] at the grid rows `on_grid` (a mask)."""
        sq = local ** 2
        with np.errstate(invalid="ignore"):
            total = np.where(np.isfinite(local[:, self.params]).any(axis=1), np.nansum(sq[:, self.params], axis=1),
                             np.nan)
        self.present &= on_grid
        self.per_layer[on_grid] += sq
        self.total[on_grid] += total
        self.seen[on_grid] |= np.isfinite(local).any(axis=1)


def _rank_sums(run, grid: np.ndarray, params: list[int], layers: int, max_points) -> _RankSums | None:
    """_RankSums over every rank on the grid steps, or None where a rank has no local_grad_norm."""
    from tview.diagnose.checks.common import matrix
    sums = _RankSums.empty(len(grid), layers, params)
    for r in run.ranks:
        got = matrix(run, "local_grad_norm", r, max_points)
        if got is None:
            return None
        steps, local = got
        sums.add(np.isin(grid, steps), local[np.isin(steps, grid)])
    return sums


def _norms(run, max_points):
    """(steps, mean over ranks of the squared local norms per layer [steps, layers] and of the whole network
    [steps], NaN where a rank lacks a finite one; squared global norms [steps, layers]; the layers with
    parameters) on the steps every rank recorded; None when a norm is not recorded or no local norm is finite
    there. Read rank by rank with running sums: memory holds one rank's rows, not every rank's."""
    glob = _global_norms(run, max_points)
    if glob is None:
        return None
    grid, global_norm = glob
    params = None
    candidates = [i for i in range(global_norm.shape[1]) if np.isfinite(global_norm[:, i]).any()]
    while params != candidates:  # again where a layer's global norm is finite only off the common steps (rare)
        params = candidates
        sums = _rank_sums(run, grid, params, global_norm.shape[1], max_points)
        if sums is None:
            return None
        keep = sums.present
        candidates = [i for i in range(global_norm.shape[1]) if np.isfinite(global_norm[keep, i]).any()]
    if not sums.seen[keep].any():
        return None
    world = len(run.ranks)
    return grid[keep], sums.per_layer[keep] / world, sums.total[keep] / world, global_norm[keep] ** 2, params


def _critical(steps, values) -> float | None:
    recent = values[len(values) // 2:]
    recent = recent[np.isfinite(recent)]
    return float(np.median(recent)) if len(recent) else None


def noise_scale(run, max_points: int | None = 2000, smoothing: float = 0.9) -> NoiseScale:
    """B_simple for the whole net (squared norms summed over layers) with `.layers` {name: NoiseScale} per layer
    with parameters; a NoiseScale with `reason` where it cannot be estimated at all (fewer than 2 ranks, no
    local_grad_norm, no batch size)."""
    if len(run.ranks) < 2:
        return undefined(f"needs 2 or more readable ranks (this run has {len(run.ranks)})")
    batch = _batch(run, max_points)
    if batch is None:
        return undefined("no batch size recorded (scalar 'examples')")
    got = _norms(run, max_points)
    if not got:
        return undefined("no local_grad_norm recorded (it is recorded under DistributedDataParallel, world size > 1)",
                         batch * len(run.ranks))
    steps, local_mean, total_mean, global_sq, params = got
    world = len(run.ranks)
    with np.errstate(invalid="ignore"):
        total_global = np.where(np.isfinite(global_sq[:, params]).any(axis=1), np.nansum(global_sq[:, params], axis=1),
                                np.nan)
    values, why = noise_scale_from_mean(total_mean, total_global, batch, world, smoothing)
    whole = NoiseScale(steps, values, why, None, batch * world, _critical(steps, values))
    for i in params:
        v, w = noise_scale_from_mean(local_mean[:, i], global_sq[:, i], batch, world, smoothing)
        whole.layers[run.layers[i]] = NoiseScale(steps, v, w, None, batch * world, _critical(steps, v))
    return whole
