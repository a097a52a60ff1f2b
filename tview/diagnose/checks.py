"""The checks `tview.diagnose` runs on a Run, one function per fault family, each returning Findings.

They read through the public Run API only (stat_matrix, stat, scalar, rank_status, first_nonfinite, ...).
"""

from __future__ import annotations

import math

import numpy as np

from tview.diagnose import detect
from tview.diagnose.findings import Finding, make
from tview.store.rank_summary import first_nonfinite_step, trend_arrays

EXPLODE_JUMP = 100.0      # gradient norm this many times the median of its previous 20 records
EXPLODE_DRIFT = 1e3       # ... or its rolling median this many times its early level
VANISH_JUMP = 1e3         # gradient norm below 1/this of its recent level, for 5 records (or to the end)
VANISH_DRIFT = 1e3        # ... or its rolling median below 1/this of its early level
DEAD_ZERO_FRAC = 0.99     # a channel is dead when its activation zero fraction stays at or above this
DEAD_UNITS_SHARE = 0.25   # units after a Linear layer: named when at least this share of the layer's are dead (a
#                           few dead ReLU units in a wide layer are normal: LeNet on digits keeps 10-20% dead)
FROZEN_REL = 1e-8         # a channel is frozen when its gradient norm stays below this x the layer's median channel
STAY_SHARE, STAY_LEAST = 0.1, 3  # "stays": over the last 10% of the records (at least 3), to the end
DIVERGE_FACTOR = 2.0      # a rank's smoothed loss above this x the lower median rank's ...
DIVERGE_GAP = 0.25        # ... and above it by this share of the run's early loss
SLOW_FACTOR = 2.0         # a rank's smoothed busy (or step) time above this x the lower median rank's
SLOW_MIN_SECONDS = 1e-3   # ... and by at least this much
LAG_FRACTION = 0.05       # a rank whose last step is behind the furthest by more than this share
FLOAT32_RTOL = 2.0 ** -23  # float32 fingerprints: equal within one rounding step (float64: exact)
SMOOTH = 19               # records in the centered rolling share of outlying losses and times
SLOW_STAY = 0.25          # a slow rank stays slow over at least the last quarter of the records
MAX_RANKS = 256           # per-rank scans (gradients, dead filters) read at most this many ranks; beyond, the loss
#                           and time checks read the rank summaries' trends


def matrix(run, name: str, rank: int, max_points: int | None = None):
    """(steps, float64 [steps, layers] with NaN where not measured or not finite), or None if not recorded."""
    try:
        steps, m = run.stat_matrix(name, rank, max_points=max_points)
    except KeyError:
        return None
    return np.asarray(steps), np.ma.filled(np.ma.masked_invalid(m).astype(np.float64), np.nan)


def _scalar(run, name: str, rank: int, max_points: int | None):
    try:
        return run.scalar(name, rank, max_points=max_points)
    except KeyError:
        return None


def _param_layers(run) -> list[int]:
    return [i for i, info in enumerate(run.layer_info) if info.get("params", 1) and info.get("kind") != "activation"]


def _is_filter_maker(info: dict) -> bool:
    t = str(info.get("type", ""))
    return t.startswith("Conv") or t == "Linear"


def conv_region(run) -> list[int]:
    """Layers whose outputs are feature maps of filters: from a Conv layer up to the next Conv or Linear layer."""
    return [i for i, maker in enumerate(_makers(run)) if maker is not None and _is_conv(run.layer_info[maker])]


def _is_conv(info: dict) -> bool:
    return str(info.get("type", "")).startswith("Conv")


def _makers(run) -> list[int | None]:
    """Per layer, the index of the Conv or Linear layer whose filters or units make its channels (the nearest one
    at or before it), None before the first."""
    out, maker = [], None
    for i, info in enumerate(run.layer_info):
        if _is_filter_maker(info):
            maker = i
        out.append(maker)
    return out


def _stay_rows(n: int) -> int:
    return max(STAY_LEAST, int(math.ceil(STAY_SHARE * n)))


# -- non-finite values -----------------------------------------------------------------------
def _first_bad(steps, bad):
    """(step, row) of the first row of bool [steps, layers] with any True, or (None, None)."""
    rows = np.flatnonzero(bad.any(axis=1)) if bad.size else []
    return (int(steps[rows[0]]), int(rows[0])) if len(rows) else (None, None)


def _counts(run, names, rank, max_points):
    got = [matrix(run, n, rank, max_points) for n in names]
    got = [g for g in got if g is not None]
    if not got:
        return None
    steps = got[0][0]
    total = sum(np.nan_to_num(g[1], nan=0.0) for g in got if len(g[0]) == len(steps))
    measured = np.isfinite(got[0][1])
    return steps, total > 0, measured


def _rank_nonfinite(run, rank: int, max_points) -> dict:
    """Where NaN/Inf show on one rank: first step in activations, gradients, local gradients, the loss."""
    out = {}
    act = _counts(run, ("act_nan", "act_inf"), rank, max_points)
    if act is not None:
        out["act"] = _first_bad(act[0], act[1]) + (act,)
    grad = _counts(run, ("grad_nan", "grad_inf"), rank, max_points)
    if grad is not None:
        out["grad"] = _first_bad(grad[0], grad[1]) + (grad,)
        local = matrix(run, "local_grad_norm", rank, max_points)
        if local is not None and len(local[0]) == len(grad[0]) and np.isfinite(local[1]).any():
            bad = ~np.isfinite(local[1]) & grad[2]  # measured gradient, local norm missing: not finite
            out["local"] = _first_bad(grad[0], bad) + ((grad[0], bad, grad[2]),)
    loss = _scalar(run, "loss", rank, max_points)
    if loss is not None and len(loss[0]):
        bad = np.flatnonzero(~np.isfinite(loss[1]))
        out["loss"] = (int(loss[0][bad[0]]) if len(bad) else None, None, None)
    out["any"] = (first_nonfinite_step(run.first_nonfinite(rank)), None, None)
    return out


def first_nonfinite_ranks(run, rank_summaries: dict | None) -> list[int]:
    """The readable ranks whose first NaN/Inf (exact: kept by the writer, in the rank summaries' first_nonfinite)
    is the run's earliest; every readable rank when there are no summaries. Only these can hold the finding: a
    rank's NaN/Inf seen in its read series is never before its own first."""
    if rank_summaries is None:
        return list(run.ranks)
    first = {}
    for r in run.ranks:
        summary = rank_summaries.get(r)
        if summary is not None and summary.problem:
            continue  # unreadable: nothing to read there
        if summary is None or summary.first_nonfinite is None:
            return list(run.ranks)  # no summary of this rank: read them all
        if summary.first_nonfinite_step() is not None:
            first[r] = summary.first_nonfinite_step()
    earliest = min(first.values(), default=None)
    return [r for r, s in first.items() if s == earliest]


def check_nonfinite(run, max_points=None, rank_summaries: dict | None = None) -> list[Finding]:
    """The first NaN/Inf of the run: earliest step over ranks, then activations (first module in forward order),
    else this rank's own gradients before the all-reduce, else gradients (first module in backward order). With
    rank_summaries only the ranks where it first appeared are read (first_nonfinite_ranks)."""
    per = {r: _rank_nonfinite(run, r, max_points) for r in first_nonfinite_ranks(run, rank_summaries)}
    starts = [v[0] for p in per.values() for v in p.values() if v[0] is not None]
    if not starts:
        return []
    s = min(starts)
    for tensor, key, pick in (("activation", "act", min), ("gradient", "local", max), ("gradient", "grad", max)):
        ranks = [r for r, p in per.items() if key in p and p[key][0] == s]
        if ranks:
            return [_nonfinite_finding(run, per, ranks, s, tensor, key, pick)]
    ranks = [r for r, p in per.items() if p.get("loss", (None,))[0] == s]
    if ranks:
        who = ranks[0] if len(ranks) < len(run.ranks) else None
        return [make("nonfinite", f"loss became NaN/Inf at step {s} on {_ranks_text(ranks, run)} "
                     "(activations and gradients not measured non-finite at that step)", rank=who, step=s,
                     tensor="loss")]
    return [make("nonfinite", f"NaN/Inf first recorded at step {s}", step=s)]


def _ranks_text(ranks, run) -> str:
    if len(ranks) == len(run.ranks) and len(ranks) > 1:
        return "every rank"
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _sources(run, layers: np.ndarray) -> np.ndarray:
    """Of the layers showing NaN/Inf, those that can make it: layers with parameters (an activation module maps
    finite inputs to finite outputs, and one module object may be called at several places, so its position in
    the model's module list is not where it ran); every layer if none has parameters."""
    params = [i for i in layers if run.layer_info[i].get("kind") != "activation"]
    return np.asarray(params if params else layers)


def _nonfinite_finding(run, per, ranks, s, tensor, key, pick) -> Finding:
    layer_of = {}
    for r in ranks:
        steps, bad, _ = per[r][key][2]
        layer_of[r] = pick(_sources(run, np.flatnonzero(bad[per[r][key][1]])))
    best = pick(layer_of.values())
    at = [r for r in ranks if layer_of[r] == best]
    rank = at[0] if len(at) < len(run.ranks) or len(run.ranks) == 1 else None
    layer = run.layers[best]
    order = "forward" if tensor == "activation" else "backward"
    extra = " (this rank's own gradient, before the all-reduce)" if key == "local" else ""
    stat = "act_nan" if tensor == "activation" else ("local_grad_norm" if key == "local" else "grad_nan")
    return make("nonfinite", f"NaN/Inf first at step {s} on {_ranks_text(at, run)}: {tensor}s of {layer}{extra}, "
                f"the first module with parameters in {order} order", rank=rank, layer=layer, step=s, tensor=tensor,
                stat=stat)


# -- exploding and vanishing gradients ------------------------------------------------------
def _onsets(series: np.ndarray, kind: str) -> int | None:
    if kind == "exploding_gradients":
        hits = [detect.jump_onset(series, EXPLODE_JUMP), detect.drift_onset(series, EXPLODE_DRIFT)]
    else:
        hits = [detect.jump_onset(series, VANISH_JUMP, sustain=5, up=False),
                detect.drift_onset(series, VANISH_DRIFT, up=False)]
    hits = [h for h in hits if h is not None]
    return min(hits) if hits else None


def gradient_onsets(steps: np.ndarray, grad_norm: np.ndarray, layers: list[str], params: list[int],
                    rank: int | None = None) -> list[Finding]:
    """Exploding and vanishing gradients from grad_norm [steps, layers] (NaN: not measured): per kind, the first
    step and, among the layers starting then, the one nearest the loss (last in forward order)."""
    found = []
    for kind in ("exploding_gradients", "vanishing_gradients"):
        onset = {i: _onsets(grad_norm[:, i], kind) for i in params}
        onset = {i: int(steps[k]) for i, k in onset.items() if k is not None}
        if not onset:
            continue
        s = min(onset.values())
        first = [i for i, v in onset.items() if v == s]
        i = max(first)
        grew = "grew" if kind == "exploding_gradients" else "fell"
        found.append(make(kind, f"gradient norm of {layers[i]} {grew} sharply at step {s} (first in backward order of "
                                f"{len(first)} layer(s) that step; {len(onset)} layer(s) in all)",
                          rank=rank, layer=layers[i], step=s, stat="grad_norm"))
    return found


def check_gradients(run, max_points=None, before: dict | None = None) -> list[Finding]:
    """Exploding/vanishing gradients per rank (steps before the rank's first NaN/Inf only); the same finding on
    every rank (all-reduced gradients) is given once, for every rank."""
    per = {}
    for rank in run.ranks[:MAX_RANKS]:
        got = matrix(run, "grad_norm", rank, max_points)
        if got is None:
            continue
        steps, g = got
        stop = (before or {}).get(rank)
        if stop is not None:
            keep = steps < stop
            steps, g = steps[keep], g[keep]
        per[rank] = gradient_onsets(steps, g, run.layers, _param_layers(run), rank)
    return merge_ranks(per, len(run.ranks))


def merge_ranks(per: dict[int, list[Finding]], n_ranks: int) -> list[Finding]:
    """Findings of one kind, layer and channels on every rank become one with rank None, at the earliest step."""
    seen: dict[tuple, list[Finding]] = {}
    for found in per.values():
        for f in found:
            seen.setdefault((f.kind, f.layer, tuple(f.channels)), []).append(f)
    out = []
    for group in seen.values():
        if len(group) == n_ranks and n_ranks > 1:
            f = min(group, key=lambda g: g.step if g.step is not None else -1)
            f.rank = None
            f.message += " (every rank)"
            out.append(f)
        else:
            out.extend(group)
    return out


# -- dead and frozen filters ------------------------------------------------------------------
def stuck_channels(flags: np.ndarray) -> dict[int, int]:
    """{channel: row where it got stuck} for the channels of bool [rows, C] that stay True over their final
    run of rows, that run covering at least the last 10% of the rows (and at least 3)."""
    flags = np.asarray(flags, dtype=bool)
    out = {}
    if flags.ndim != 2 or len(flags) < STAY_LEAST:
        return out
    for c in range(flags.shape[1]):
        start = detect.trailing_streak(flags[:, c])
        if start is not None and len(flags) - start >= _stay_rows(len(flags)):
            out[c] = start
    return out


def _channel_rows(run, name, layer, rank, max_points):
    try:
        steps, v = run.stat(name, layer, rank, max_points=max_points)
    except KeyError:
        return None
    v = np.asarray(v, dtype=np.float64)
    return (np.asarray(steps), v) if v.ndim == 2 and len(steps) else None


def _dead_on_rank(run, rank, layers, max_points) -> dict[int, dict[int, int]]:
    """{layer index: {channel: step it died}} on one rank."""
    out = {}
    for i in layers:
        got = _channel_rows(run, "act_channel_zero_frac", run.layers[i], rank, max_points)
        if got is None:
            continue
        steps, z = got
        with np.errstate(invalid="ignore"):
            stuck = stuck_channels(z >= DEAD_ZERO_FRAC)
        if stuck:
            out[i] = {c: int(steps[k]) for c, k in stuck.items()}
    return out


def _dead_finding(run, r: int, i: int, maker: int, chans: dict[int, int]) -> Finding:
    conv = _is_conv(run.layer_info[maker])
    step = min(chans.values())
    return make("dead_filters" if conv else "dead_units",
                f"{run.layers[i]}: {len(chans)} channel(s) stay zero from step {step} on (zero fraction >= "
                f"{DEAD_ZERO_FRAC}; {'filters' if conv else 'units'} of {run.layers[maker]}): {_list(chans)}",
                rank=r, layer=run.layers[i], step=step, channels=sorted(chans), stat="act_channel_zero_frac")


def _worth_naming(run, i: int, maker: int, chans: dict[int, int]) -> bool:
    """Any dead filter; units after a Linear layer when DEAD_UNITS_SHARE of the layer's or more are dead."""
    if _is_conv(run.layer_info[maker]):
        return True
    return len(chans) >= DEAD_UNITS_SHARE * int(run.layer_info[i].get("channels") or 1)


def check_dead(run, max_points=None) -> list[Finding]:
    """Channels whose activations stay zero: filters in the conv part (dead_filters), units after a Linear layer
    when DEAD_UNITS_SHARE of the layer's or more are (dead_units); a layer whose dead channels only repeat the
    previous layer's of the same block (a ReLU after a dead BatchNorm channel) is left out."""
    makers = _makers(run)
    layers = [i for i, m in enumerate(makers) if m is not None and run.layer_info[i].get("channels")]
    per = {r: _dead_on_rank(run, r, layers, max_points) for r in run.ranks[:MAX_RANKS]}
    found = {}
    for r, dead in per.items():
        found[r], prev = [], {}
        for i in layers:
            chans = dead.get(i, {})
            if i == makers[i]:
                prev = {}  # a new block: channel numbers of the block before mean other channels
            if chans and not set(chans) <= set(prev) and _worth_naming(run, i, makers[i], chans):
                found[r].append(_dead_finding(run, r, i, makers[i], chans))
            prev = chans
    return merge_ranks(found, len(run.ranks))


def _list(channels) -> str:
    c = sorted(channels)
    return ", ".join(map(str, c[:12])) + (" ..." if len(c) > 12 else "")


def _block(run, i: int) -> list[int]:
    """Layer i and the layers after it up to the next Conv or Linear layer (its norm and activation)."""
    out = [i]
    for j in range(i + 1, len(run.layers)):
        if _is_filter_maker(run.layer_info[j]):
            break
        out.append(j)
    return out


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
        if not str(run.layer_info[i].get("type", "")).startswith("Conv"):
            continue
        got = _channel_rows(run, "grad_channel_norm", run.layers[i], rank, max_points)
        if got is None:
            continue
        steps, g = got
        row_median = detect.nanmedian(g, axis=1)[:, None]
        with np.errstate(invalid="ignore"):
            stuck = stuck_channels((g <= FROZEN_REL * row_median) & (row_median > 0))
        excused = set().union(*(dead_at.get(run.layers[j], set()) for j in _block(run, i)))
        chans = {c: int(steps[k]) for c, k in stuck.items() if c not in excused}
        if chans:
            step = min(chans.values())
            found.append(make("frozen_filters", f"{run.layers[i]}: gradient of {len(chans)} channel(s) stays zero from "
                              f"step {step} on while its activations are alive: {_list(chans)}", layer=run.layers[i],
                              step=step, channels=sorted(chans), stat="grad_channel_norm"))
    return found


# -- ranks: loss, time, status --------------------------------------------------------------
def _trend(summary: dict | None, name: str):
    return trend_arrays(summary, name) if summary and summary.get("trend") else None


def aligned_scalar(run, name: str, max_points=None, rank_summaries: dict | None = None
                   ) -> tuple[np.ndarray, list[int], np.ndarray] | None:
    """(steps every rank has, ranks, [ranks, steps]) of a scalar, or None when fewer than 2 ranks have it. Beyond
    MAX_RANKS ranks, with rank_summaries, from their trends (every k-th recorded step, no shard read: a step found
    there is exact to k)."""
    trends = rank_summaries is not None and len(run.ranks) > MAX_RANKS
    series = {}
    for r in run.ranks:
        got = _trend(rank_summaries.get(r), name) if trends else _scalar(run, name, r, max_points)
        if got is not None and len(got[0]):
            series[r] = got
    if len(series) < 2:
        return None
    common = None
    for steps, _ in series.values():
        common = steps if common is None else np.intersect1d(common, steps)
    ranks = sorted(series)
    rows = [np.asarray(series[r][1], dtype=np.float64)[np.isin(series[r][0], common)] for r in ranks]
    return common, ranks, np.stack(rows)


def _outlier_onsets(values: np.ndarray, factor: float, gap: float, stay: float) -> dict[int, int]:
    """{row: column where it starts} for the rows of [ranks, steps] that are above factor x the lower median row
    and by more than `gap` on most steps (a centered rolling share >= 0.7) to the end, over at least the last
    `stay` share of the columns; the start is where the row's log ratio to the lower median shifts up most
    clearly (within two smoothing windows before that stretch and the stretch itself)."""
    ref = detect.lower_median(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        flags = (values > factor * ref) & (values - ref > gap)
        log_ratio = np.log(values / ref)
    least = max(STAY_LEAST, int(math.ceil(stay * values.shape[1])))
    out = {}
    for k in range(len(values)):
        start = detect.sustained_onset(flags[k], SMOOTH, least)
        if start is not None:
            lo = max(1, start - 2 * SMOOTH)
            out[k] = lo - 1 + detect.mean_shift(log_ratio[k, lo - 1:], 1, len(values[k]) - lo - least // 2)
    return out


def check_loss(run, max_points=None, rank_summaries: dict | None = None) -> list[Finding]:
    """Ranks whose loss rose well above the other ranks' and stays there (beyond MAX_RANKS ranks: on the rank
    summaries' trends, see aligned_scalar)."""
    got = aligned_scalar(run, "loss", max_points, rank_summaries)
    if got is None:
        return []
    steps, ranks, loss = got
    early = float(detect.nanmedian(loss[:, :max(STAY_LEAST, len(steps) // 10)]))
    gap = DIVERGE_GAP * abs(early) if np.isfinite(early) else 0.0
    found = []
    for k, start in _outlier_onsets(loss, DIVERGE_FACTOR, gap, STAY_SHARE).items():
        mine = float(detect.nanmedian(loss[k, start:]))
        rest = float(detect.nanmedian(np.delete(loss, k, axis=0)[:, start:]))
        found.append(make("rank_diverges", f"rank {ranks[k]}: loss {mine:.3g} from step {steps[start]} on, the other "
                          f"ranks' {rest:.3g} (bad data on this rank?)", rank=ranks[k], step=int(steps[start]),
                          stat="loss"))
    return found


def check_time(run, max_points=None, rank_summaries: dict | None = None) -> list[Finding]:
    """Ranks that stay slower than the others: busy_time (this rank's own work per step, when recorded) or else
    step_time (under synchronous data parallelism every rank waits for the slowest: step times are equal); beyond
    MAX_RANKS ranks on the rank summaries' trends (see aligned_scalar)."""
    for name in ("busy_time", "step_time"):
        got = aligned_scalar(run, name, max_points, rank_summaries)
        if got is not None:
            break
    else:
        return []
    steps, ranks, t = got
    steps, t = steps[1:], t[:, 1:]  # step 0 holds the set-up
    found = []
    for k, start in _outlier_onsets(t, SLOW_FACTOR, SLOW_MIN_SECONDS, SLOW_STAY).items():
        mine = float(detect.nanmedian(t[k, start:]))
        rest = float(detect.nanmedian(np.delete(t, k, axis=0)[:, start:]))
        found.append(make("slow_rank", f"rank {ranks[k]}: {name} {mine * 1e3:.1f} ms per step from step {steps[start]} "
                          f"on, {mine / rest:.2f}x the other ranks' {rest * 1e3:.1f} ms", rank=ranks[k],
                          step=int(steps[start]), stat=name))
    return found


def check_status(run, rank_summaries: dict | None = None) -> list[Finding]:
    """Ranks with no readable shard, ranks that stopped without closing while others closed, ranks far behind
    (rank_summaries: run.rank_summaries() when the caller has them, else run.rank_status() is read)."""
    status = rank_summaries if rank_summaries is not None else run.rank_status()
    found = []
    last = {r: s["last_step"] for r, s in status.items() if s["last_step"] is not None}
    furthest = max(last.values(), default=None)
    any_closed = any(s["closed"] for s in status.values())
    for r, s in sorted(status.items()):
        if s["problem"] is not None:
            found.append(make("rank_missing", f"rank {r}: {s['problem']}", rank=r))
        elif s["last_step"] is None:
            found.append(make("rank_missing", f"rank {r}: nothing recorded", rank=r))
        elif not s["closed"] and (any_closed or s["last_step"] < furthest):
            found.append(make("rank_stopped", f"rank {r}: stopped after step {s['last_step']} without closing its "
                              f"shard (crashed or killed?); the furthest rank reached step {furthest}", rank=r,
                              step=s["last_step"] + 1, stat="step_time"))
        elif furthest - s["last_step"] > max(1, LAG_FRACTION * furthest):
            found.append(make("rank_lags", f"rank {r}: last step {s['last_step']}, behind the furthest rank "
                              f"({furthest})", rank=r, step=s["last_step"] + 1, stat="step_time"))
    return found


# -- replicas ----------------------------------------------------------------------------------
FINGERPRINTS = ("weight_sum", "weight_norm")


REPLICA_READS = 8  # beyond MAX_RANKS ranks: the ranks the summaries name as differing read in full, at most


def _fingerprint(run, name, max_points, ranks=None):
    """(steps every rank has, [ranks, steps, layers], float64 stored?) of one per-layer fingerprint (on `ranks`,
    default every readable rank)."""
    got = {r: run.stat_matrix(name, r, max_points=max_points) for r in (run.ranks if ranks is None else ranks)}
    common = None
    for steps, _ in got.values():
        common = np.asarray(steps) if common is None else np.intersect1d(common, steps)
    exact = all(np.ma.getdata(m).dtype == np.float64 for _, m in got.values())
    stack = np.stack([np.ma.filled(m.astype(np.float64), np.nan)[np.isin(s, common)] for s, m in got.values()])
    return common, stack, exact


def replica_suspects(run, rank_summaries: dict) -> tuple[list[int], list[int] | None] | None:
    """From the rank summaries' weight_sum trends (whole-network sums, exact): None when every rank holds the same
    sum at every trend point, else (ranks to read in full: one that agrees with the majority, then up to
    REPLICA_READS that differ from it at the first trend point where ranks differ; the ranks that differ there).
    Weights that drift apart stay apart, so a rank that differs before that point still differs at it. Trends
    without weight_sum: (every readable rank, None), read in full."""
    got = aligned_scalar(run, "weight_sum", None, rank_summaries)
    if got is None:
        return list(run.ranks), None
    _, ranks, values = got
    differs, odd = detect.disagreeing(values, 0.0)
    hit = np.flatnonzero(differs)
    if not len(hit):
        return None
    at = odd[:, hit[0]]
    odd_ranks = [ranks[k] for k in np.flatnonzero(at)]
    reference = [ranks[k] for k in np.flatnonzero(~at)][:1]
    return reference + odd_ranks[:REPLICA_READS], odd_ranks


def check_replicas(run, max_points=None, rank_summaries: dict | None = None) -> list[Finding]:
    """The first step and layer where data-parallel ranks hold different weights (weight_sum, weight_norm).
    Beyond MAX_RANKS ranks, with rank_summaries: only if their weight_sum trends differ, read on the ranks
    replica_suspects names (the step and layer exact between those ranks)."""
    if len(run.ranks) < 2:
        return []
    ranks, named = run.ranks, None
    if rank_summaries is not None and len(run.ranks) > MAX_RANKS:
        suspects = replica_suspects(run, rank_summaries)
        if suspects is None:
            return []
        ranks, named = suspects
    best = None
    for name in [n for n in FINGERPRINTS if n in run.stat_names()]:
        steps, v, exact = _fingerprint(run, name, max_points, ranks)
        if not len(steps):
            continue
        R, T, L = v.shape
        rtol = 0.0 if exact else FLOAT32_RTOL
        differs, odd = detect.disagreeing(v.reshape(R, T * L), rtol)
        hit = np.flatnonzero(differs)
        if len(hit) and (best is None or steps[hit[0] // L] < best[0]):
            t, layer = divmod(int(hit[0]), L)
            best = (int(steps[t]), layer, name, rtol, v[:, t, layer], odd[:, hit[0]])
    return [] if best is None else [_replica_finding(run, *best, ranks=ranks, named=named)]


def _replica_finding(run, step, layer, name, rtol, values, odd, ranks=None, named=None) -> Finding:
    """ranks: the ranks values and odd are of (default every readable rank); named: the ranks that differ, when
    known beforehand (else those odd marks)."""
    ranks = run.ranks if ranks is None else ranks
    differing = named if named is not None else [ranks[k] for k in np.flatnonzero(odd)]
    rank = differing[0] if len(differing) == 1 and len(run.ranks) > 2 else None
    how = "float64, exact" if rtol == 0 else f"float32, relative tolerance {rtol:g}"
    vals = ", ".join(f"rank {r}: {v:.9g}" for r, v in zip(ranks[:8], values[:8]))
    who = f"rank {rank} differs from the others" if rank is not None else "ranks differ"
    return make("replicas_differ", f"weights of {run.layers[layer]} differ across ranks after the optimizer step "
                f"at step {step}: {who} ({name}, {how}: {vals})", rank=rank, layer=run.layers[layer], step=step,
                stat=name)
