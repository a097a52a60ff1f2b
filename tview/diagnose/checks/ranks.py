"""Check: ranks that differ from the others: a loss that diverges (bad data), a rank the others wait for (slow
anywhere: data, forward/backward, after the optimizer step), ranks that stop, lag or are missing."""

from __future__ import annotations

import math

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks import repeated, uniform
from tview.diagnose.checks.common import HOLD_WINDOW, MAX_RANKS, STAY_LEAST, Context, aligned_scalar, on_steps
from tview.diagnose.findings import Finding, declare, make

KINDS = declare({
    "rank_stopped": ("error", "time",
                     "a rank's shard ends without being closed while other ranks closed theirs (crashed or killed): "
                     "step is the first step it lacks"),
    "rank_missing": ("error", None, "a rank of the world size has no readable shard"),
    "rank_diverges": ("warning", "loss", "a rank's loss rose well above the other ranks' and stays there (bad data on "
                                         "that rank), or (3 ranks or more) stays the highest or the lowest, apart "
                                         "from theirs; or its batches carry no variation from some step on (every "
                                         "channel of a layer zero for all or none of the batch, on the other ranks "
                                         "not: a broken data loader), or repeat (its layers' zero fractions change "
                                         "from step to step many times less than on the other ranks: a loader stuck "
                                         "on one batch), dated to that step"),
    "slow_rank": ("warning", "time",
                  "the rank the others wait for: its own time per step (step time less its wait for the others in "
                  "the all-reduce, else its busy time, else its step time; less its wait for a CPU) stays above the "
                  "other ranks' from some step on, step after step, or is far above them on a regular share of the "
                  "steps (1 in 10 or more, as every 5th step: a stall that costs the job a tenth of its time or more); "
                  "where tview's own time there explains it, the finding says so"),
    "rank_lags": ("warning", "time", "a rank's last recorded step is well behind the furthest rank's"),
})

DIVERGE_FACTOR = 2.0      # a rank's smoothed loss above this x the lower median rank's ...
DIVERGE_GAP = 0.25        # ... and above it by this share of the run's early loss
DIVERGE_SHARE = 0.7       # ... on at least this share of the records from its onset on
APART_FACTOR = 1.3        # 3 ranks or more: a rank's loss the highest (lowest) and this x (1 / this x) the median
APART_GAP = 0.05          # ... rank's or more (less), apart by this share of the run's early loss, on DIVERGE_SHARE
APART_WIDTH = 5           # ... the ratio taken as the median of this many records around each (a batch's noise)
SLOW_SHARE = 0.1          # the others wait for a rank at least this share of their step (its own time less the
#                           lower median rank's: the job runs a tenth slower for it) as a median from its onset on,
SLOW_MIN_SECONDS = 5e-3   # ... and longer than a time slice of the OS or a flush of a writer thread can make it ...
SLOW_ORDER_SHARE = 0.7    # ... and it is above the lower median on at least this share of those records (by
#                           chance a rank is, on half or less of the records: the first of two ranks, one of three)
LAG_FRACTION = 0.05       # a rank whose last step is behind the furthest by more than this share
WINDOW = HOLD_WINDOW      # records after an onset that must hold the level (and so must all records to the end)
DIVERGE_STAY = 0.1        # a diverging rank stays so over at least the last tenth of the records
SLOW_STAY = 0.15          # a slow rank stays slow over at least the last 15% of the records
TVIEW_SHARE = 0.5         # a slow rank's tview_time above the other ranks' by this share of its lead: tview is why
STALL_SHARE = 0.1         # a rank slow now and then (a stall: waited for SLOW_SHARE and SLOW_MIN_SECONDS at a
#                           step) on at least this share of the records from its onset on, over 2 x WINDOW records
#                           after it and to the end ...
STALL_OVER = 3.0          # ... this many times as often as the median other rank (a busy host stalls every rank) ...
STALL_LEAST = 6           # ... at least this many times, the stalls costing SLOW_SHARE of the job's time or more
STALL_GAP = 3.0           # stalls before a gap longer than this x the median gap between them open no stretch
PERIOD_SHARE = 0.7        # stalls this share of whose gaps are equal come every that many steps


def _outlier_onsets(flags: np.ndarray, level: np.ndarray, share: float, stay: float,
                    above: np.ndarray | None = None, order_share: float = 0.0) -> dict[int, int]:
    """{row: column where it starts} for the rows of bool [ranks, steps] `flags` (a rank outlying at a step) that
    are True on at least `share` of the records from their onset on, both over the WINDOW records after it and
    over all records to the end (at least the last `stay` share of them): a noisy tail does not break
    it; with `above`, also True there on `order_share` of those records (the same rank stands out step after
    step). The onset is dated by dated_onset on the row's `level` (how far it is above the others)."""
    least = max(STAY_LEAST, int(math.ceil(stay * flags.shape[1])))
    out = {}
    for k in range(len(flags)):
        ok = detect.held(flags[k], WINDOW, share)
        if above is not None:
            ok &= detect.held(above[k], WINDOW, order_share)
        start = detect.first_held(ok, least)
        if start is not None:
            out[k] = dated_onset(flags[k], level[k], start, least)
    return out


def dated_onset(flags: np.ndarray, level: np.ndarray, start: int, least: int) -> int:
    """The onset of an outlying stretch first held at `start`: where the row's level shifts up most clearly
    (within two windows before `start` and after it; or `start` itself, when the flags are mostly up for a whole
    window before that shift: a level that rose twice), moved on to the first outlying record from there (an odd
    high value just before the change, below the thresholds, does not date it)."""
    n = len(flags)
    lo = max(1, start - 2 * WINDOW)
    shift = lo - 1 + detect.mean_shift(level[lo - 1:], 1, n - lo - least // 2)
    if shift - start >= WINDOW and flags[start:shift].mean() >= 0.7:
        shift = start
    first = np.flatnonzero(flags[shift:shift + WINDOW])
    return shift + int(first[0]) if len(first) else shift


def _diverging(loss: np.ndarray, gap: float) -> dict[int, int]:
    """Onsets of the ranks whose loss is above DIVERGE_FACTOR x the lower median rank's and by more than `gap`."""
    ref = detect.lower_median(loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        flags = (loss > DIVERGE_FACTOR * ref) & (loss - ref > gap)
        log_ratio = np.log(loss / ref)
    return _outlier_onsets(flags, log_ratio, DIVERGE_SHARE, DIVERGE_STAY)


def _apart(loss: np.ndarray, gap: float) -> dict[int, tuple[int, int]]:
    """{row: (onset, +1 above or -1 below)} of the ranks (3 or more of them: with 2, which one is apart is not
    known) whose loss is the highest of all ranks (or the lowest) and APART_FACTOR x the median rank's or more
    (or less; as a median over APART_WIDTH records), by more than `gap`, on DIVERGE_SHARE of the records from its
    onset on: one rank that sees other data (another label mapping, a repeated batch) while the others agree."""
    if len(loss) < 3:
        return {}
    ref = detect.nanmedian(loss, axis=0)
    finite = np.isfinite(loss)  # (a step where no rank's loss is finite: -inf and inf, apart from nothing)
    top, bottom = np.where(finite, loss, -np.inf).max(axis=0), np.where(finite, loss, np.inf).min(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_ratio = np.log(loss / ref)
        level = detect.rolling_median(log_ratio, APART_WIDTH)  # a batch's noise smoothed out: the rank's level
        far = (np.abs(level) >= math.log(APART_FACTOR)) & (np.abs(np.expm1(level)) * ref > gap)
        above, below = far & (loss >= top) & (level > 0), far & (loss <= bottom) & (level < 0)
    out = {k: (start, 1) for k, start in _outlier_onsets(above, log_ratio, DIVERGE_SHARE, DIVERGE_STAY).items()}
    for k, start in _outlier_onsets(below, -log_ratio, DIVERGE_SHARE, DIVERGE_STAY).items():
        out.setdefault(k, (start, -1))
    return out


def waited_share(own: np.ndarray, host: np.ndarray | None, step: np.ndarray) -> np.ndarray:
    """[ranks, steps]: how long the others wait for each rank, as a share of the step (`step`: per column, the
    median rank's step time): its own time above the lower median rank's, once each rank's own time is less its
    wait for a CPU beyond the others' (`host`: the host took that part; no lower than the fastest rank's own time,
    as that wait also counts some of its wait for the others)."""
    if host is not None:
        fastest = np.nanmin(np.where(np.isfinite(own), own, np.inf), axis=0)
        own = own - np.clip(host, 0, np.clip(own - fastest, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (own - detect.lower_median(own)) / step


def waited_for(waited: np.ndarray, step: np.ndarray) -> dict[int, int]:
    """Onsets of the ranks the others wait for at least SLOW_SHARE of their step and SLOW_MIN_SECONDS (as a median
    from the onset on), the same rank waited for at all step after step (SLOW_ORDER_SHARE of the records)."""
    with np.errstate(invalid="ignore"):
        flags = (waited >= SLOW_SHARE) & (waited * step >= SLOW_MIN_SECONDS)
        above = waited > 0
    stay = max(SLOW_STAY, WINDOW / max(flags.shape[1], 1))  # a median over a whole window at least
    # dated on the ranks of its waited shares, not their sizes: a spike of the host's before the onset, or a step
    # after it where another rank was slower still, counts as one record more or less, not as a level
    order = np.argsort(np.argsort(np.nan_to_num(waited), axis=1), axis=1).astype(np.float64)
    return _outlier_onsets(flags, order, 0.5, stay, above, SLOW_ORDER_SHARE)


def check_loss(run, max_points=None, rank_summaries: dict | None = None) -> list[Finding]:
    """Ranks whose loss rose well above the other ranks' and stays there, or (3 ranks or more) stays apart from
    them, above or below (beyond MAX_RANKS ranks: on the rank summaries' trends, see aligned_scalar)."""
    got = aligned_scalar(run, "loss", max_points, rank_summaries)
    if got is None:
        return []
    steps, ranks, loss = got
    early = float(detect.nanmedian(loss[:, :max(STAY_LEAST, len(steps) // 10)]))
    scale = abs(early) if np.isfinite(early) else 0.0
    onsets = {k: (start, 1) for k, start in _diverging(loss, DIVERGE_GAP * scale).items()}
    for k, found in _apart(loss, APART_GAP * scale).items():
        onsets.setdefault(k, found)
    found, others = [], _others(loss)
    for k, (start, side) in sorted(onsets.items()):
        mine, rest = float(detect.nanmedian(loss[k, start:])), others(k, start)
        why = ("bad data on this rank?" if side > 0 else
               "this rank's batches easier than the others', or repeated?")
        found.append(make("rank_diverges", f"rank {ranks[k]}: loss {mine:.3g} from step {steps[start]} on, the other "
                          f"ranks' {rest:.3g} ({why})", rank=ranks[k], step=int(steps[start]), stat="loss"))
    return found


def _others(values: np.ndarray):
    """others(k, start): the median of the other ranks' values of [ranks, steps] from column start on (each
    column range sorted once for all the ranks named from it)."""
    pools: dict[int, np.ndarray] = {}

    def others(k: int, start: int) -> float:
        if start not in pools:
            pools[start] = detect.finite_sorted(values[:, start:])
        return detect.median_without(pools[start], values[k, start:])
    return others


def own_time(run, max_points=None, rank_summaries: dict | None = None):
    """(how it is measured, the stat it shows best in, steps, ranks, [ranks, steps]) of each rank's own time per
    step: step_time less wait_time (its wait for the others in the all-reduce) when both are recorded, else
    busy_time, else step_time (under synchronous data parallelism every rank's step time is the slowest's); None
    when fewer than 2 ranks have any."""
    step = aligned_scalar(run, "step_time", max_points, rank_summaries)
    got = _less(step, aligned_scalar(run, "wait_time", max_points, rank_summaries))
    if got is not None:
        return "step time less its wait for the others", "wait_time", *got
    got = aligned_scalar(run, "busy_time", max_points, rank_summaries)
    if got is not None:
        return "busy_time", "busy_time", *got
    return None if step is None else ("step_time", "step_time", *step)


def _less(a, b):
    """(steps, ranks, a - b) of two (steps, ranks, [ranks, steps]) on the steps both have; None without both."""
    if a is None or b is None or a[1] != b[1]:
        return None
    common = np.intersect1d(a[0], b[0])
    return common, a[1], a[2][:, np.isin(a[0], common)] - b[2][:, np.isin(b[0], common)]


def host_share(run, steps: np.ndarray, ranks: list, max_points=None, rank_summaries: dict | None = None
               ) -> np.ndarray:
    """[ranks, steps] of each rank's wait for a CPU beyond the lower median rank's (cpu_wait_time: runnable, not
    running, as when other processes share its cores): the part of its own time the host took; 0 where not
    recorded: None."""
    got = aligned_scalar(run, "cpu_wait_time", max_points, rank_summaries)
    if got is None or got[1] != ranks:
        return None
    q = np.stack([on_steps(steps, (got[0], row)) for row in got[2]])
    return np.nan_to_num(np.clip(q - detect.lower_median(q), 0, None))


def check_time(run, max_points=None, rank_summaries: dict | None = None, before: int | None = None) -> list[Finding]:
    """The ranks the others wait for: own time (own_time) above the other ranks', beyond its wait for a CPU
    (host_share), that stays so (beyond MAX_RANKS ranks on the rank summaries' trends, see aligned_scalar); before:
    only steps before this one (the first NaN/Inf: after it the training is broken and its timing says nothing of
    the ranks)."""
    got = own_time(run, max_points, rank_summaries)
    if got is None:
        return []
    name, stat, steps, ranks, t = got
    keep = slice(1, None if before is None else int(np.searchsorted(steps, before)))
    steps, t = steps[keep], t[:, keep]  # step 0 holds the set-up
    if not len(steps):
        return []
    host = host_share(run, steps, ranks, max_points, rank_summaries)
    step = median_step_time(run, steps, max_points, rank_summaries)
    waited = waited_share(t, host, step)
    found, others = [], _others(t)
    tview_cost = _tview_cost(run, steps, ranks, max_points, rank_summaries)
    cpu = "" if host is None else ", beyond its wait for a CPU"
    slow = waited_for(waited, step)
    for k, start in slow.items():
        mine = float(detect.nanmedian(t[k, start:]))
        rest = others(k, start)
        share = float(detect.nanmedian(waited[k, start:]))
        ours = tview_cost(k, start, mine - rest)
        found.append(make("slow_rank", f"rank {ranks[k]}: own time ({name}) {mine * 1e3:.1f} ms per step from step "
                          f"{steps[start]} on, the other ranks' {rest * 1e3:.1f} ms: the others wait for it "
                          f"{share:.0%} of their step{cpu}{ours}", rank=ranks[k], step=int(steps[start]),
                          stat="tview_time" if ours else stat))
    for k, cols in stalls(waited, step).items():
        if k not in slow:
            found.append(_stall_finding(steps, ranks[k], t, k, cols, step, (name, stat, cpu), tview_cost))
    return found


def stalls(waited: np.ndarray, step: np.ndarray) -> dict[int, np.ndarray]:
    """{row: its stalls (column indices) from its onset on} of the ranks of [ranks, steps] `waited` (waited_share)
    that the others wait for now and then but regularly: SLOW_SHARE of the step and SLOW_MIN_SECONDS at a step, on
    STALL_SHARE of the records or more from the onset on (over the 2 x WINDOW records after it and to the end),
    STALL_LEAST times at least, STALL_OVER times as often as the median other rank, mostly apart (the median gap
    between them 2 records or more: not a burst of slow steps), and those stalls SLOW_SHARE or more of the job's time
    from there (`step`: per column, the median rank's step time, the stalls included). A
    rank slow on every step is waited_for's."""
    with np.errstate(invalid="ignore"):
        flags = (waited >= SLOW_SHARE) & (waited * step >= SLOW_MIN_SECONDS)
    least = max(STAY_LEAST, int(math.ceil(SLOW_STAY * flags.shape[1])), 2 * WINDOW)
    out = {}
    for k in range(len(flags)):
        start = detect.first_held(detect.held(flags[k], 2 * WINDOW, STALL_SHARE), least)
        if start is None:
            continue
        cols = _stretch(np.flatnonzero(flags[k, start:]) + start)
        if len(cols) < STALL_LEAST or flags.shape[1] - cols[0] < least or np.median(np.diff(cols)) < 2:
            continue  # too few, too late, or a burst of slow steps one after the other (not now and then)
        others = float(np.median(np.delete(flags[:, cols[0]:], k, axis=0).mean(axis=1)))
        lost = len(cols) * float(np.median(waited[k, cols] * step[cols])) / float(np.nansum(step[cols[0]:]))
        if flags[k, cols[0]:].mean() >= STALL_OVER * others and lost >= SLOW_SHARE:
            out[k] = cols
    return out


def _stretch(cols: np.ndarray) -> np.ndarray:
    """Stall columns less the leading ones each followed by a gap longer than STALL_GAP x the median gap (an odd
    slow step before the stalls began does not date them)."""
    gaps = np.diff(cols)
    if not len(gaps):
        return cols
    far = np.flatnonzero(gaps > STALL_GAP * np.median(gaps))
    far = far[far < len(cols) // 2]  # only before the stretch: a long gap late in it is not its start
    return cols[far[-1] + 1:] if len(far) else cols


def _stall_finding(steps, rank, t, k, cols, step, how, tview_cost) -> Finding:
    """slow_rank for a rank stalled now and then: how often (every that many steps, where most gaps are equal),
    its own time on those steps against the other ranks', and the share of the job's time the others wait."""
    name, stat, cpu = how
    mine, rest = _mine_and_others(t, k, cols)
    span = len(steps) - cols[0]
    lost = len(cols) * float(np.median((t[k, cols] - rest))) / float(np.nansum(step[cols[0]:]))
    gap, count = np.unique(np.diff(steps[cols]), return_counts=True)
    every = f" (every {gap[np.argmax(count)]} steps)" if count.max() >= PERIOD_SHARE * count.sum() else ""
    ours = tview_cost(k, cols, mine - rest)
    return make("slow_rank", f"rank {rank}: slow on 1 recorded step in {span / len(cols):.0f}{every} from step "
                f"{steps[cols[0]]} on ({len(cols)} of {span} steps), +{(mine - rest) * 1e3:.0f} ms each time: own "
                f"time ({name}) {mine * 1e3:.1f} ms on those steps, the other ranks' {rest * 1e3:.1f} ms; the others "
                f"wait for it {max(lost, 0.0):.0%} of the job's time{cpu}{ours}", rank=rank, step=int(steps[cols[0]]),
                stat="tview_time" if ours else stat)


def _mine_and_others(values: np.ndarray, k: int, cols: np.ndarray) -> tuple[float, float]:
    """(rank k's median of [ranks, steps] `values` at these columns, the other ranks' median there)."""
    return float(detect.nanmedian(values[k, cols])), float(detect.nanmedian(np.delete(values[:, cols], k, axis=0)))


def _tview_cost(run, steps: np.ndarray, ranks: list, max_points=None, rank_summaries: dict | None = None):
    """cost(k, start, lead): where tview's own time on rank k (tview_time, on the recorded steps from column start,
    or on the columns of an array start)
    is at least TVIEW_SHARE of its lead over the other ranks' own time, a sentence that says tview makes it slow;
    else (or where tview_time is not recorded) ''."""
    got = aligned_scalar(run, "tview_time", max_points, rank_summaries)
    if got is None or got[1] != ranks:
        return lambda k, start, lead: ""
    own = np.stack([on_steps(steps, (got[0], row)) for row in got[2]])
    others = _others(own)

    def cost(k: int, start, lead: float) -> str:
        if isinstance(start, np.ndarray):  # the columns of a rank's stalls
            mine, rest = _mine_and_others(own, k, start)
        else:
            mine, rest = float(detect.nanmedian(own[k, start:])), others(k, start)
        if not (np.isfinite(mine) and np.isfinite(rest)) or lead <= 0 or mine - rest < TVIEW_SHARE * lead:
            return ""
        return (f"; tview's own time (tview_time) on it is {mine * 1e3:.1f} ms a recorded step, the other ranks' "
                f"{rest * 1e3:.1f} ms: tview makes it slow (record less often, or a lighter preset)")
    return cost


def median_step_time(run, steps: np.ndarray, max_points=None, rank_summaries: dict | None = None) -> np.ndarray:
    """Per step, the median over the ranks of step_time (NaN where none recorded it)."""
    got = aligned_scalar(run, "step_time", max_points, rank_summaries)
    if got is None:
        return np.full(len(steps), np.nan)
    return on_steps(steps, (got[0], detect.nanmedian(got[2], axis=0)))


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


def uniform_batches(ctx: Context, diverging: list[Finding]) -> list[Finding]:
    """rank_diverges of the loss (`diverging`), each dated earlier where that rank's batches turned uniform
    (uniform.uniform_onsets: a broken data loader, seen at once in its activations) or began to repeat
    (repeated.repeated_onsets: a loader stuck on one batch) before, and one for each rank whose batches did with no
    loss finding; the dead channels found on such a rank alone (replicas hold the same weights: its data made them
    so) follow from it."""
    found = {f.rank: f for f in diverging}
    signals = zero_frac_signals_of(ctx)
    flat = uniform.uniform_onsets(ctx.run, {r: s["uniform"] for r, s in signals.items()})
    for rank, (step, layer) in flat.items():
        _batch_finding(ctx, found, rank, step, layer, (
            f"from step {step} on every channel of {layer} is zero for all of the batch or for none of it, on the "
            "other ranks not: its batches carry no variation (a broken data loader: all-zero or constant inputs?)"))
    again = repeated.repeated_onsets(ctx.run, {r: s["change"] for r, s in signals.items()}, list(signals))
    for rank, (step, layer, less) in again.items():
        if rank not in flat:
            _batch_finding(ctx, found, rank, step, layer, (
                f"from step {step} on its batches repeat: the zero fractions of {layer}'s channels change from one "
                f"step to the next {less:.0f}x less than on the other ranks (a data loader stuck on one batch?)"))
    return list(found.values())


def _batch_finding(ctx: Context, found: dict, rank: int, step: int, layer: str, why: str) -> None:
    """Add `why` (a rank's batches went wrong at `step`, seen on `layer`) to found[rank]: appended to its loss
    finding where that is as early, else a finding of its own dated there (the loss finding's words after it)."""
    seen = found.get(rank)
    if seen is not None and seen.step is not None and seen.step <= step:
        seen.message += f"; {why}"
    else:
        loss = f"; its loss then drew apart: {seen.message.split(': ', 1)[1]}" if seen is not None else ""
        found[rank] = make("rank_diverges", f"rank {rank}: {why}{loss}", rank=rank, step=step,
                           tensor="activation", stat="act_channel_zero_frac")
    found[rank].followed_by += _explained_dead(ctx, rank)


def zero_frac_signals_of(ctx: Context) -> dict:
    """{rank: uniform.zero_frac_signals} of the first MAX_RANKS ranks: from diagnosis's pass over the shards, the
    ranks it did not read read now."""
    ranks = ctx.run.ranks[:MAX_RANKS]
    done = {r: w for r, w in _worked(ctx).items() if r in ranks}
    missing = [r for r in ranks if r not in done]
    if missing:
        done.update(ctx.run.per_rank(lambda r: uniform.zero_frac_signals(ctx.run, r, ctx.max_points), missing))
    return {r: done[r] for r in ranks if r in done}


def _explained_dead(ctx: Context, rank: int) -> list[Finding]:
    """Take out of ctx.found the dead_filters and dead_units found on this rank alone (not every rank's) and return
    them: over uniform batches a channel is dead or alive as a whole."""
    out = []
    for kind in ("dead_filters", "dead_units"):
        mine = [f for f in ctx.found.get(kind, []) if f.rank == rank]
        ctx.found[kind] = [f for f in ctx.found.get(kind, []) if f.rank != rank]
        out += mine
    return out


def _worked(ctx: Context) -> dict:
    return getattr(ctx.run, "worked", lambda key: {})(__name__)


def rank_work(ctx: Context):
    """Each rank's uniform-batch flags and step-to-step changes (uniform.zero_frac_signals), read in diagnosis's one
    pass over the shards."""
    max_points = ctx.max_points
    return lambda run, rank: uniform.zero_frac_signals(run, rank, max_points)


def check(ctx: Context) -> list[Finding]:
    first_nan = ctx.first("nonfinite")
    return (uniform_batches(ctx, check_loss(ctx.run, ctx.max_points, ctx.rank_summaries))
            + check_time(ctx.run, ctx.max_points, ctx.rank_summaries, first_nan and first_nan.step)
            + check_status(ctx.run, ctx.rank_summaries))
