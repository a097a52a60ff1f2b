"""Check: exploding and vanishing gradients, each layer against its own history and against the loss."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks import common
from tview.diagnose.checks.common import Context, matrix, merge_ranks, on_steps, param_layers
from tview.diagnose.findings import Finding, declare, make

KINDS = declare({
    "exploding_gradients": ("error", "gradient",
                            "a layer's gradient norm jumped far above the largest it had lately (or grew far above its "
                            "early level): the first step, and the layer nearest the loss where it starts; the rank "
                            "where one rank's own gradient before the all-reduce made the jump"),
    "gradient_cut": ("error", "gradient",
                     "a layer's gradient norm became exactly 0 and stays 0 to the end, with the layers before it: no "
                     "gradient reaches them (an output that is all zeros or constant before it, a dead block, a "
                     "detach or a multiplication by 0): the first step, and the layer nearest the loss where it "
                     "starts"),
    "vanishing_gradients": ("warning", "gradient",
                            "a layer's gradient norm, per unit of loss, fell far below its own recent level and stays "
                            "there (a gradient that shrinks as the loss converges is not vanishing): the first step "
                            "and the layer nearest the loss where it starts"),
})

EXPLODE_JUMP = 10.0       # gradient norm this many times the largest of its previous 20 records, twice in a row
EXPLODE_DRIFT = 1e3       # ... or its rolling median this many times its early level
VANISH_JUMP = 1e3         # gradient per unit of loss below 1/this of its recent level, for 5 records (or to the end)
VANISH_DRIFT = 1e3        # ... or its rolling median below 1/this of its early level
LOSS_SMOOTH = 5           # records in the centered rolling median of the loss the gradients are divided by
ONE_RANK = 10.0           # an all-reduced gradient that explodes comes from one rank when that rank's own gradient
#                           (local_grad_norm, before the all-reduce) is this many times the median of the others'


def _onsets(raw: np.ndarray, judged: np.ndarray, kind: str) -> list[int | None]:
    """Per row of [layers, steps]: exploding: the gradient itself above everything it had lately (a loss that blows
    up with it does not hide it); vanishing: the gradient per unit of loss below its usual level. All the layers
    of a rank in one array pass."""
    if kind == "exploding_gradients":
        hits = zip(detect.jump_onsets(raw, EXPLODE_JUMP, level="max"), detect.drift_onsets(raw, EXPLODE_DRIFT))
    else:
        hits = zip(detect.jump_onsets(judged, VANISH_JUMP, sustain=5, up=False),
                   detect.drift_onsets(judged, VANISH_DRIFT, up=False))
    return [min((h for h in pair if h is not None), default=None) for pair in hits]


def per_loss(grad_norm: np.ndarray, loss: np.ndarray | None) -> np.ndarray:
    """grad_norm [steps, layers] divided by the loss (its centered rolling median, so one odd batch does not
    move it): a gradient that shrinks with the loss as training converges stays level. Where the loss is not
    positive and finite (not recorded, or a loss that can be negative) the gradient is left as it is."""
    if loss is None or not (np.isfinite(loss) & (loss > 0)).any():
        return grad_norm
    smooth = detect.rolling_median(np.where(loss > 0, loss, np.nan), LOSS_SMOOTH)
    scale = np.where(np.isfinite(smooth) & (smooth > 0), smooth, 1.0)
    return grad_norm / scale[:, None]


def gradient_onsets(steps: np.ndarray, grad_norm: np.ndarray, layers: list[str], params: list[int],
                    rank: int | None = None, loss: np.ndarray | None = None) -> list[Finding]:
    """Exploding and vanishing gradients from grad_norm [steps, layers] (NaN: not measured), judged per unit of
    the loss at those steps (when given): per kind, the first step and, among the layers starting then, the one
    nearest the loss (last in forward order)."""
    found = []
    judged = per_loss(grad_norm, loss)
    for kind in ("exploding_gradients", "vanishing_gradients"):
        onset = dict(zip(params, _onsets(grad_norm[:, params].T, judged[:, params].T, kind)))
        onset = {i: int(steps[k]) for i, k in onset.items() if k is not None}
        if not onset:
            continue
        s, first, i = _earliest(onset)
        grew, per = ("grew", "") if kind == "exploding_gradients" else ("fell", " per unit of loss")
        found.append(make(kind, f"gradient norm of {layers[i]}{per} {grew} sharply at step {s} (first "
                                f"in backward order of {len(first)} layer(s) that step; {len(onset)} layer(s) in all)",
                          rank=rank, layer=layers[i], step=s, stat="grad_norm"))
    return _cut(steps, grad_norm, layers, params, rank) + found


def _earliest(onset: dict[int, int]) -> tuple[int, list[int], int]:
    """(the first step of {layer: onset step}, the layers starting then, the one of them nearest the loss)."""
    s = min(onset.values())
    first = [i for i, v in onset.items() if v == s]
    return s, first, max(first)


def _cut(steps: np.ndarray, grad_norm: np.ndarray, layers: list[str], params: list[int], rank) -> list[Finding]:
    """gradient_cut: the layers whose gradient norm is exactly 0 over its final records (the last 10%, at least 3)
    after it was positive; the first step and, among the layers cut then, the one nearest the loss."""
    g = grad_norm[:, params]
    since = common.stuck_channels(g == 0)  # {column: first row of its final run of exact zeros}
    onset = {params[c]: int(steps[k]) for c, k in since.items() if k and (np.nan_to_num(g[:k, c]) > 0).any()}
    if not onset:
        return []
    s, first, i = _earliest(onset)
    return [make("gradient_cut", f"no gradient reaches {layers[i]} from step {s} on: its gradient norm is exactly 0 to "
                 f"the end, and that of {len(first) - 1} layer(s) before it from the same step ({len(onset)} in all): "
                 f"its input is all zeros or constant (a dead block before it), or nothing passes the gradient back "
                 f"to it", rank=rank, layer=layers[i], step=s, stat="grad_norm")]


def from_one_rank(run, f: Finding, max_points=None) -> Finding:
    """An exploding gradient found on every rank (the all-reduced gradient, the same on each) whose layer's own
    gradient on one rank (local_grad_norm, before the all-reduce) was ONE_RANK times the median of the other ranks'
    at that step: that rank's finding (a bad batch there, or a scaling applied there only); else f as it is."""
    if f.kind != "exploding_gradients" or f.rank is not None or f.layer is None or len(run.ranks) < 2:
        return f
    layer, at = run.layer_index(f.layer), np.asarray([f.step])
    local = {}
    for r in run.ranks[:common.MAX_RANKS]:
        got = matrix(run, "local_grad_norm", r, max_points)
        if got is not None:
            local[r] = float(on_steps(at, (got[0], got[1][:, layer]))[0])
    local = {r: v for r, v in local.items() if np.isfinite(v)}
    if len(local) < 2:
        return f
    top = max(local, key=local.get)
    others = float(detect.nanmedian(np.asarray([v for r, v in local.items() if r != top])))
    if not others > 0 or local[top] < ONE_RANK * others:
        return f
    where = (f"; it came from rank {top}: its own gradient of {f.layer} before the all-reduce (local_grad_norm) was "
             f"{local[top]:.3g} at step {f.step}, {local[top] / others:.3g}x the median of the other ranks' "
             f"({others:.3g}): a bad batch on rank {top}, or a scaling of its gradient there only")
    return dataclasses.replace(f, rank=top, stat="local_grad_norm", message=f"all-reduced "
                               f"{f.message.removesuffix(' (every rank)')}{where}")


def reads(ctx: Context) -> tuple[str, ...]:
    """The per-layer statistics this check reads of every rank (tview.diagnose.reads): local_grad_norm where
    an exploding gradient found on every rank may come from one rank (from_one_rank)."""
    return ("grad_norm", "local_grad_norm")


def check(ctx: Context) -> list[Finding]:
    """Exploding/vanishing gradients per rank (steps before the run's first NaN/Inf only); the same finding on
    every rank (all-reduced gradients) is given once, for every rank."""
    run, stop = ctx.run, ctx.first("nonfinite")
    loss = ctx.loss()
    judged: dict[bytes, list[Finding]] = {}  # all-reduced gradients are the same on every rank: judged once

    def on_rank(rank: int) -> list[Finding] | None:
        got = matrix(run, "grad_norm", rank, ctx.max_points)
        if got is None:
            return None
        steps, g = got
        if stop is not None:
            keep = steps < stop.step
            steps, g = steps[keep], g[keep]
        key = hashlib.sha256(steps.tobytes() + g.tobytes()).digest()
        if key not in judged:
            judged[key] = gradient_onsets(steps, g, run.layers, param_layers(run), None, on_steps(steps, loss))
        return [dataclasses.replace(f, rank=rank) for f in judged[key]]
    per = run.per_rank(on_rank, run.ranks[:common.MAX_RANKS])  # split over processes for 256 ranks and more
    merged = merge_ranks({r: f for r, f in per.items() if f is not None}, len(run.ranks))
    return [from_one_rank(run, f, ctx.max_points) for f in merged]
