"""Check: the optimizer's side of a blow-up: a learning rate that jumps above any it had (or grows far beyond it
after a flat or decaying stretch), an update that jumps
(update ratio per unit of gradient) without a gradient that did, and a loss that jumps and stays up."""

from __future__ import annotations

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks.common import Context, matrix, param_layers, scalar
from tview.diagnose.findings import Finding, declare, make

KINDS = declare({
    "lr_jump": ("error", "lr",
                "the learning rate jumped to several times the largest it had before (warm-up and restarts stay "
                "within it): the step whose update used it; or it grew step by step to LR_GROWTH x that after a flat "
                "or decaying stretch (a warm-up from the start, or one held back at a lr near 0, is not named): the "
                "step the growth began"),
    "update_ratio_jump": ("error", "weight",
                          "the update ratio (|update| / |weight|) per unit of gradient jumped far above its recent "
                          "level: the optimizer stepped much further for the same gradient (a learning rate or "
                          "optimizer state blow-up), in half the layers or more at once"),
    "loss_spike": ("error", "loss",
                   "the loss (mean over ranks) jumped well above its recent level and stayed there for several "
                   "records: the first step"),
})

LR_JUMP = 3.0             # lr above this x the largest lr before it
UPDATE_JUMP = 10.0        # update ratio per unit of gradient this many times the median of its previous 20 records
UPDATE_RISE = 3.0         # ... dated where it rose above this x its level, the records up to the jump all above it
GRAD_REF = 10             # ... the gradient taken as the largest of its own and the this many records' before (the
#                           momentum of a spike carries over: the update then follows a gradient already gone)
SPIKE_FACTOR = 3.0        # loss: the median of the next SPIKE_STAY records this many times the median of the 20 before
SPIKE_GAP = 0.25          # ... and above it by this share of the run's early loss
SPIKE_STAY = 3
SPIKE_JUMP, SPIKE_HOLD, SPIKE_KEEP = 5.0, 10, 1.5  # or: one record this many x, the median of the next SPIKE_HOLD
#                                                    SPIKE_KEEP x (a blow-up the net falls back from, to a plateau
#                                                    above where it was: a collapse to chance)
HISTORY, LEAST = 20, 5    # records a level is the median of, and the fewest that make one
LR_RANKS = 64             # ranks whose learning rates are read (beyond: the first rank's)
LR_GROWTH = 10.0          # lr above this x the largest before a growth that follows a settled stretch ...
LR_SETTLED = HISTORY      # ... this many records or more in a row each at or below the one before (flat or decaying:
#                           a warm-up is over; a stepwise warm-up's shorter plateaus do not end it)
LR_NEAR_ZERO = 1e-3       # a lr flat from the first record below this x the lr it grows to: a warm-up held back


def lr_onset(lr: np.ndarray) -> int | None:
    """First index (LEAST or later) where a learning rate exceeds LR_JUMP x the largest before it (that one
    positive)."""
    lr = np.asarray(lr, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        before = np.maximum.accumulate(np.where(np.isfinite(lr), lr, -np.inf))
        hit = np.flatnonzero((lr[1:] > LR_JUMP * before[:-1]) & (before[:-1] > 0))
    hit = hit[hit + 1 >= LEAST]  # a warm-up's first steps multiply a tiny lr: LEAST records of history first
    return int(hit[0] + 1) if len(hit) else None


def lr_growth(lr: np.ndarray) -> tuple[int, int] | None:
    """(index where the growth began, first index where it is beyond) of the first learning rate that grows to
    LR_GROWTH x the largest it had before the growth, the growth following a settled stretch (LR_SETTLED records
    or more in a row at or below the one before, the last of them just before it); None if none. A warm-up from
    the start of the run has no settled stretch before it; one held back a while (flat from the first record at a
    lr below LR_NEAR_ZERO x the one it grows to) is not named; a restart (a warm-up again after a decay) rises back
    to a peak it had, not beyond it."""
    lr = np.asarray(lr, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        down = np.r_[False, lr[1:] <= lr[:-1]]
    idx = np.arange(len(lr))
    run = idx - np.maximum.accumulate(np.where(down, -1, idx))  # records in a row at or below the one before
    last = np.maximum.accumulate(np.where(down & (run >= LR_SETTLED), idx, -1))  # end of the latest settled stretch
    peak = np.maximum.accumulate(np.where(np.isfinite(lr), lr, -np.inf))
    base = np.where(last >= 0, peak[np.maximum(last, 0)], np.nan)
    with np.errstate(invalid="ignore"):
        hit = np.flatnonzero((lr > LR_GROWTH * base) & (base > 0))
    if not len(hit):
        return None
    begin, k = int(last[hit[0]]) + 1, int(hit[0])
    if np.all(down[1:begin]) and base[k] < LR_NEAR_ZERO * np.nanmax(lr[begin:]):
        return None  # flat from the first record at a lr near 0, then rising: a delayed warm-up
    return begin, k


def lr_names(run, rank: int) -> list[str]:
    """The learning-rate scalars of a rank: 'lr' (the first parameter group) and 'lr/N' (the others)."""
    return [n for n in run.scalar_names(rank) if n == "lr" or (n.startswith("lr/") and n[3:].isdigit())]


def check_lr(run, max_points=None) -> list[Finding]:
    """The first step where any parameter group's learning rate jumps above the largest it had, or where it began
    to grow to LR_GROWTH x that after a flat or decaying stretch (lr_growth), on each rank (the first LR_RANKS
    ranks; beyond, the first rank's: a job's optimizers hold the same) and named where it is on some ranks only (a
    rank-local schedule or edit: its replicas then differ)."""
    ranks = run.ranks if len(run.ranks) <= LR_RANKS else run.ranks[:1]
    events = {rank: event for rank in ranks if (event := _lr_event(run, rank, max_points)) is not None}
    if not events:
        return []
    event = min(events.values(), key=_first_jump)
    step, name, now, before = event[:4]
    on = sorted(rank for rank, e in events.items() if e[0] == step)
    rank = on[0] if len(on) < len(run.ranks) else None
    where = f" on rank {rank} only" if rank is not None and len(on) == 1 else ""
    if len(event) == 4:
        message = (f"learning rate {name} {now:.3g} at step {step}{where}, {now / before:.3g}x the largest before it "
                   f"({before:.3g})")
    else:
        at, rate = event[4:]
        message = (f"learning rate {name} grows from step {step}{where} (x{rate:.3g} a recorded step, no single "
                   f"jump): {now:.3g} at step {at}, {now / before:.3g}x the largest it had before ({before:.3g}), "
                   f"after a stretch where it was flat or decaying (not a warm-up)")
    return [make("lr_jump", message, step=step, stat=name, rank=rank)]


def _lr_event(run, rank: int, max_points=None) -> tuple | None:
    """The rank's first learning-rate jump (step, scalar, lr then, largest before) or growth (step it began,
    scalar, lr when beyond LR_GROWTH x, largest before, step beyond, factor a record), or None."""
    events = []
    for name in lr_names(run, rank):
        steps, lr = scalar(run, name, rank, max_points)
        lr = np.asarray(lr, dtype=np.float64)
        k = lr_onset(lr)
        if k is not None:
            events.append((int(steps[k]), name, float(lr[k]), float(np.nanmax(lr[:k]))))
        grew = lr_growth(lr)
        if grew is not None:
            s, at = grew
            rate = (lr[at] / lr[s - 1]) ** (1 / (at - s + 1)) if lr[s - 1] > 0 else float("nan")
            events.append((int(steps[s]), name, float(lr[at]), float(np.nanmax(lr[:s])), int(steps[at]), rate))
    return min(events, key=_first_jump) if events else None


def _first_jump(event: tuple):
    """The earliest event; at one step a jump (4 values) before a growth that begins with it."""
    return event[0], len(event), event[1]


def update_per_gradient(update: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """update ratio [steps, layers] divided by the gradient norm, the gradient taken as the largest of its own and
    the GRAD_REF records' before it (a batch with a small gradient, or momentum carrying an earlier large one,
    does not make a jump)."""
    padded = np.vstack([np.full((GRAD_REF, grad.shape[1]), np.nan), grad])
    with np.errstate(invalid="ignore"):
        ref = np.fmax.reduce(np.lib.stride_tricks.sliding_window_view(padded, GRAD_REF, axis=0)[:len(grad)], axis=-1)
    g = np.fmax(grad, ref)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(g > 0, update / g, np.nan)


def check_update(run, max_points=None, before: int | None = None) -> list[Finding]:
    """The first step where the update per unit of gradient jumps in half the layers or more at once (before the
    first NaN/Inf): the optimizer's doing (one layer alone: its weights were set from outside)."""
    if not run.ranks:
        return []
    up, grad = matrix(run, "update_ratio", run.ranks[0], max_points), matrix(run, "grad_norm", run.ranks[0],
                                                                             max_points)
    if up is None or grad is None:
        return []
    steps = np.intersect1d(up[0], grad[0])
    if before is not None:
        steps = steps[steps < before]
    u = update_per_gradient(up[1][np.isin(up[0], steps)], grad[1][np.isin(grad[0], steps)])
    params = param_layers(run)
    onset = {i: detect.jump_onset(u[:, i], UPDATE_JUMP, HISTORY, LEAST, sustain=1) for i in params}
    onset = {i: k for i, k in onset.items() if k is not None}
    if not onset:
        return []
    k = min(onset.values())
    at = [i for i, v in onset.items() if v == k]
    if 2 * len(at) < len(params):
        return []  # one layer's weights moved: an edit from outside the optimizer, not its step
    k = int(np.floor(np.median([detect.rise_start(u[:, i], k, UPDATE_RISE, HISTORY) for i in at])))  # a ramp: its start
    return [make("update_ratio_jump", f"update ratio per unit of gradient jumped at step {steps[k]} in {len(at)} of "
                 f"{len(params)} layers: the optimizer stepped much further for the same gradient", step=int(steps[k]),
                 stat="update_ratio")]


def spike_onset(loss: np.ndarray) -> int | None:
    """First index where the loss leaves its level (the median of the HISTORY before it) and stays up, above it by
    SPIKE_GAP x the early loss: it and the median of it and the next SPIKE_STAY - 1 losses SPIKE_FACTOR x the level;
    or it SPIKE_JUMP x the level and the median of the SPIKE_HOLD losses after it SPIKE_KEEP x the median of the LEAST
    before it (where a falling loss had got to)."""
    v = np.asarray(loss, dtype=np.float64)
    n = len(v)
    if n < LEAST + SPIKE_STAY:
        return None
    early = float(detect.nanmedian(v[:max(LEAST, n // 10)]))
    gap = SPIKE_GAP * abs(early) if np.isfinite(early) else 0.0
    prior = _medians(np.concatenate([np.full(HISTORY, np.nan), v]), HISTORY, n)
    recent = _medians(np.concatenate([np.full(LEAST, np.nan), v]), LEAST, n)  # where a falling loss had got to
    stay = np.fmin(v, _medians(np.concatenate([v, np.full(SPIKE_STAY, np.nan)]), SPIKE_STAY, n))
    hold = _medians(np.concatenate([v[1:], np.full(SPIKE_HOLD + 1, np.nan)]), SPIKE_HOLD, n)
    with np.errstate(invalid="ignore"):
        whole_hold = np.arange(n) < n - SPIKE_HOLD  # the records after it all there (a live run's tail: not yet)
        flags = (prior > 0) & (((stay > SPIKE_FACTOR * prior) & (stay - prior > gap))
                               | ((v > SPIKE_JUMP * prior) & (hold > SPIKE_KEEP * recent) & (hold - recent > gap)
                                  & whole_hold))
    flags[:LEAST] = False
    flags[n - SPIKE_STAY + 1:] = False
    hit = np.flatnonzero(flags)
    return int(hit[0]) if len(hit) else None


def _medians(padded: np.ndarray, width: int, n: int) -> np.ndarray:
    """The median of each of the first n windows of `width` values of padded (NaN left out)."""
    return detect.nanmedian(np.lib.stride_tricks.sliding_window_view(padded, width)[:n], axis=1)


def check_loss_spike(ctx: Context, before: int | None = None) -> list[Finding]:
    got = ctx.loss()
    if got is None:
        return []
    steps, loss = got
    if before is not None:
        keep = steps < before
        steps, loss = steps[keep], loss[keep]
    k = spike_onset(loss)
    if k is None:
        return []
    prior = float(detect.nanmedian(loss[max(0, k - HISTORY):k]))
    recent = float(detect.nanmedian(loss[max(0, k - LEAST):k]))
    later = loss[k + 1:k + 1 + SPIKE_HOLD]
    after = float(detect.nanmedian(later)) if len(later) else float("nan")
    times = f"{after / recent:.3g}x" if recent > 0 else "above"
    return [make("loss_spike", f"loss {loss[k]:.3g} at step {steps[k]}, {loss[k] / prior:.3g}x its level before "
                 f"({prior:.3g}); the median of the {len(later)} records after it {after:.3g}, {times} where it had "
                 f"got to ({recent:.3g}, the median of the {LEAST} before)", step=int(steps[k]), stat="loss")]


def check(ctx: Context) -> list[Finding]:
    first_nan = ctx.first("nonfinite")
    stop = None if first_nan is None else first_nan.step
    return (check_lr(ctx.run, ctx.max_points) + check_update(ctx.run, ctx.max_points, stop)
            + check_loss_spike(ctx, stop))
