"""Check: dead filters and units (activations that stay zero), frozen filters (a gradient that stays zero) and
frozen layers (weights that stop changing while the others learn)."""

from __future__ import annotations

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks import common
from tview.diagnose.checks.common import (
    Context,
    block,
    channel_rows,
    conv_region,
    is_conv,
    listed,
    makers,
    matrix,
    param_layers,
    stay_rows,
    stuck_channels,
)
from tview.diagnose.findings import Finding, declare, make

KINDS = declare({
    "dead_filters": ("warning", "activation",
                     "output channels whose activations stay zero (zero fraction >= 0.99) to the end of the run, "
                     "dated to the recorded step they died (a module called at several places in a step, such as "
                     "one shared ReLU, is judged on all its calls together: the store keeps one row per module)"),
    "dead_units": ("warning", "activation",
                   "units after a fully connected (Linear) layer whose activations stay zero (zero fraction >= 0.99) "
                   "to the end of the run, when they are a quarter of the layer's units or more (dying ReLUs)"),
    "frozen_filters": ("warning", "gradient",
                       "output channels whose gradient stays zero while the layer's other channels learn "
                       "(per-channel statistic grad_channel_norm)"),
    "frozen_layer": ("warning", "weight",
                     "a layer's weights stop changing (weight_sum and weight_norm equal from one recorded step to the "
                     "next) to the end of the run while other layers' change: not trained (requires_grad off, or "
                     "not in the optimizer), from that step"),
})

DEAD_ZERO_FRAC = 0.99     # a channel is dead when its activation zero fraction stays at or above this
DEAD_UNITS_SHARE = 0.25   # units after a Linear layer: named when at least this share of the layer's are dead (a
#                           few dead ReLU units in a wide layer are normal: LeNet on digits keeps 10-20% dead)
FROZEN_REL = 1e-8         # a channel is frozen when its gradient norm stays below this x the layer's median channel
FINGERPRINTS = ("weight_sum", "weight_norm")


def _dead_on_rank(run, rank, layers, max_points) -> dict[int, dict[int, int]]:
    """{layer index: {channel: step it died}} on one rank (the per-channel zero fractions of all its layers read
    in one call)."""
    try:
        got = run.channel_stats("act_channel_zero_frac", rank, [run.layers[i] for i in layers], max_points)
    except KeyError:  # not recorded
        return {}
    out = {}
    for i in layers:
        steps, z = got.get(run.layers[i], ((), np.zeros(0)))
        if np.ndim(z) != 2 or not len(steps):
            continue
        with np.errstate(invalid="ignore"):
            stuck = stuck_channels(np.asarray(z, dtype=np.float64) >= DEAD_ZERO_FRAC)
        if stuck:
            out[i] = {c: int(steps[k]) for c, k in stuck.items()}
    return out


def death_step(chans: dict[int, int]) -> int:
    """The step most of the dead channels died at (the earliest of equals): a layer killed at one step is dated
    to it, though a few of its channels may have been dead from the start."""
    steps, counts = np.unique(list(chans.values()), return_counts=True)
    return int(steps[np.argmax(counts)])


def _dead_finding(run, r: int, i: int, maker: int, chans: dict[int, int]) -> Finding:
    conv = is_conv(run.layer_info[maker])
    step = death_step(chans)
    then = sum(v == step for v in chans.values())
    earlier = sum(v < step for v in chans.values())
    when = f"{then} died at step {step}" + (f", {earlier} before" if earlier else "") + (
        f", {len(chans) - then - earlier} after" if len(chans) - then - earlier else "")
    return make("dead_filters" if conv else "dead_units",
                f"{run.layers[i]}: {len(chans)} channel(s) stay zero to the end ({when}; zero fraction >= "
                f"{DEAD_ZERO_FRAC}; {'filters' if conv else 'units'} of {run.layers[maker]}): {listed(chans)}",
                rank=r, layer=run.layers[i], step=step, channels=sorted(chans), stat="act_channel_zero_frac")


def merge_dead(run, per: dict[int, list[Finding]], dead: dict[int, dict[int, dict[int, int]]]) -> list[Finding]:
    """A layer with dead channels on every rank becomes one finding for every rank, with the channels dead on all
    of them, each dated to the step it is dead on all of them from (replicas hold the same weights; which units a
    batch leaves at zero, and so the step a rank sees them die, varies a little by rank). dead: {rank:
    _dead_on_rank's answer}."""
    groups: dict[tuple, list[Finding]] = {}
    for found in per.values():
        for f in found:
            groups.setdefault((f.kind, f.layer), []).append(f)
    out = []
    for group in groups.values():
        i = run.layer_index(group[0].layer)
        common = set.intersection(*(set(dead[f.rank][i]) for f in group))
        if len(run.ranks) > 1 and len(group) == len(run.ranks) and common:
            chans = {c: max(dead[f.rank][i][c] for f in group) for c in common}
            f = _dead_finding(run, None, i, makers(run)[i], chans)
            f.message += f" (every rank; {len(common)} channel(s) on all of them, dated where dead on all)"
            out.append(f)
        else:
            out.extend(group)
    return out


def worth_naming(run, i: int, maker: int, chans: dict[int, int]) -> bool:
    """Any dead filter; units after a Linear layer when DEAD_UNITS_SHARE of the layer's or more are dead."""
    if is_conv(run.layer_info[maker]):
        return True
    return len(chans) >= DEAD_UNITS_SHARE * int(run.layer_info[i].get("channels") or 1)


def channel_layers(run) -> list[int]:
    """The layers whose channels a Conv or Linear layer makes, with channels recorded."""
    return [i for i, m in enumerate(makers(run)) if m is not None and run.layer_info[i].get("channels")]


def rank_work(ctx: Context):
    """The dead channels of each rank, found in diagnosis's one pass over the shards (tview.diagnose.reads)."""
    layers, max_points = channel_layers(ctx.run), ctx.max_points
    return lambda run, rank: _dead_on_rank(run, rank, layers, max_points)


def check_dead(run, max_points=None, done: dict | None = None) -> list[Finding]:
    """Channels whose activations stay zero: filters in the conv part (dead_filters), units after a Linear layer
    when DEAD_UNITS_SHARE of the layer's or more are (dead_units); a layer whose dead channels only repeat the
    previous layer's of the same block (a ReLU after a dead BatchNorm channel) is left out. done: {rank:
    _dead_on_rank's answer} of ranks already looked at (rank_work)."""
    made_by, layers, ranks = makers(run), channel_layers(run), run.ranks[:common.MAX_RANKS]
    done = dict(done or {})
    missing = [r for r in ranks if r not in done]
    if missing:
        done.update(run.per_rank(lambda r: _dead_on_rank(run, r, layers, max_points), missing))
    per = {r: done[r] for r in ranks}
    found = {}
    for r, dead in per.items():
        found[r], prev = [], {}
        for i in layers:
            chans = dead.get(i, {})
            if i == made_by[i]:
                prev = {}  # a new block: channel numbers of the block before mean other channels
            if chans and not set(chans) <= set(prev) and worth_naming(run, i, made_by[i], chans):
                found[r].append(_dead_finding(run, r, i, made_by[i], chans))
            prev = chans
    return merge_dead(run, found, per)


def check_frozen(run, max_points=None, dead: list[Finding] | None = None) -> list[Finding]:
    """Channels whose gradient (grad_channel_norm, all-reduced: read on the first rank) stays zero while the
    layer's other channels have one; channels whose activations are dead in the same block are left out."""
    if "grad_channel_norm" not in run.channel_stat_names() or not run.ranks:
        return []
    rank = run.ranks[0]
    dead_at = {}
    for f in dead or []:
        dead_at.setdefault(f.layer, set()).update(f.channels)
    found = []
    for i in conv_region(run):
        if not is_conv(run.layer_info[i]):
            continue
        got = channel_rows(run, "grad_channel_norm", run.layers[i], rank, max_points)
        if got is None:
            continue
        steps, g = got
        row_median = detect.nanmedian(g, axis=1)[:, None]
        with np.errstate(invalid="ignore"):
            stuck = stuck_channels((g <= FROZEN_REL * row_median) & (row_median > 0))
        excused = set().union(*(dead_at.get(run.layers[j], set()) for j in block(run, i)))
        chans = {c: int(steps[k]) for c, k in stuck.items() if c not in excused}
        if chans:
            step = min(chans.values())
            found.append(make("frozen_filters", f"{run.layers[i]}: gradient of {len(chans)} channel(s) stays zero from "
                              f"step {step} on while its activations are alive: {listed(chans)}", layer=run.layers[i],
                              step=step, channels=sorted(chans), stat="grad_channel_norm"))
    return found


def unchanged(run, rank: int, max_points) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, bool [steps, layers]: the layer's weight fingerprints equal the record before's), or None. Row 0
    is False (nothing before it)."""
    got = [matrix(run, name, rank, max_points) for name in FINGERPRINTS if name in run.stat_names()]
    got = [g for g in got if g is not None]
    if not got:
        return None
    steps = got[0][0]
    same = np.ones((len(steps), len(run.layers)), dtype=bool)
    for s, m in got:
        if len(s) != len(steps):
            return None
        with np.errstate(invalid="ignore"):
            same &= np.vstack([np.zeros((1, m.shape[1]), bool), (m[1:] == m[:-1]) & np.isfinite(m[1:])])
    same[0] = False
    return steps, same


def _zero_gradient(run, rank, i, rows, max_points) -> bool:
    """The layer's recorded gradient is exactly zero over these rows (its units are dead: not frozen)."""
    got = matrix(run, "grad_norm", rank, max_points)
    if got is None:
        return False
    g = got[1][rows, i]
    g = g[np.isfinite(g)]
    return len(g) > 0 and bool((g == 0).all())


def check_frozen_layers(run, max_points=None) -> list[Finding]:
    """Layers whose weights stay equal from one record to the next to the end (at least the last 10% of the
    records) while another layer's change on most of those records; the first rank's weights (replicas hold
    the same; when they differ, replicas_differ says so)."""
    if not run.ranks:
        return []
    got = unchanged(run, run.ranks[0], max_points)
    if got is None:
        return []
    steps, same = got
    params = param_layers(run)
    found = []
    for i in params:
        k = detect.trailing_streak(same[:, i])
        if k is None or len(steps) - k < stay_rows(len(steps)):
            continue
        others = [j for j in params if j != i]
        if not others or not (~same[k:, others].all(axis=1)).mean() > 0.5:
            continue
        if _zero_gradient(run, run.ranks[0], i, slice(k, None), max_points):
            continue
        step = int(steps[k]) if k >= 2 else int(steps[0])
        found.append(make("frozen_layer", f"{run.layers[i]}: weights unchanged from step {step} to the end while "
                          "other layers learn (not trained: requires_grad off, or not in the optimizer)",
                          layer=run.layers[i], step=step, stat="weight_norm"))
    return found


def check(ctx: Context) -> list[Finding]:
    dead = check_dead(ctx.run, ctx.max_points, getattr(ctx.run, "worked", lambda key: {})(__name__))
    return dead + check_frozen(ctx.run, ctx.max_points, dead) + check_frozen_layers(ctx.run, ctx.max_points)
