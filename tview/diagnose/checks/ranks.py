"""Check: ranks that differ from the others: a loss that diverges (bad data), a rank the others wait for (slow
anywhere: data, forward/backward, after the optimizer step), ranks that stop, lag or are missing."""

from __future__ import annotations

import math

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks.common import STAY_LEAST, Context, aligned_scalar
from tview.diagnose.findings import Finding, declare, make

KINDS = declare({
    "rank_stopped": ("error", "time",
                     "a rank's shard ends without being closed while other ranks closed theirs (crashed or killed): "
                     "step is the first step it lacks"),
    "rank_missing": ("error", None, "a rank of the world size has no readable shard"),
    "rank_diverges": ("warning", "loss", "a rank's loss rose well above the other ranks' and stays there (bad data on "
                                         "that rank)"),
    "slow_rank": ("warning", "time",
                  "the rank the others wait for: its own time per step (step time less its wait for the others in "
                  "the all-reduce; else its busy time, else its step time) stays well above the other ranks'"),
    "rank_lags": ("warning", "time", "a rank's last recorded step is well behind the furthest rank's"),
})

DIVERGE_FACTOR = 2.0      # a rank's smoothed loss above this x the lower median rank's ...
DIVERGE_GAP = 0.25        # ... and above it by this share of the run's early loss
SLOW_FACTOR = 1.5         # a rank's own time above this x the lower median rank's (half again: the others wait a third)
SLOW_MIN_SECONDS = 1e-3   # ... and by at least this much
LAG_FRACTION = 0.05       # a rank whose last step is behind the furthest by more than this share
SMOOTH = 19               # records in the centered rolling share of outlying losses and times
DIVERGE_STAY = 0.1        # a diverging rank stays so over at least the last tenth of the records
SLOW_STAY = 0.15          # a slow rank stays slow over at least the last 15% of the records


def _outlier_onsets(values: np.ndarray, factor: float, gap: float, stay: float) -> dict[int, int]:
    """{row: column where it starts} for the rows of [ranks, steps] that are above factor x the lower median row
    and by more than `gap` on most steps (a centered rolling share >= 0.7) to the end, over at least the last
    `stay` share of the columns; the start is where the row's log ratio to the lower median shifts up most
    clearly (within two smoothing windows before that stretch and the stretch itself; or where its flags turn,
    when they are mostly up for a whole window before that shift), moved on to the first outlying record from
    there (an odd high value just before the change, below the factor or the gap, does not date it)."""
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
            shift = lo - 1 + detect.mean_shift(log_ratio[k, lo - 1:], 1, len(values[k]) - lo - least // 2)
            if shift - start >= SMOOTH and flags[k, start:shift].mean() >= 0.7:
                shift = start  # a level that rose twice: outlying for a whole window before the largest shift
            first = np.flatnonzero(flags[k, shift:shift + SMOOTH])
            out[k] = shift + int(first[0]) if len(first) else shift
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
    for k, start in _outlier_onsets(loss, DIVERGE_FACTOR, gap, DIVERGE_STAY).items():
        mine = float(detect.nanmedian(loss[k, start:]))
        rest = float(detect.nanmedian(np.delete(loss, k, axis=0)[:, start:]))
        found.append(make("rank_diverges", f"rank {ranks[k]}: loss {mine:.3g} from step {steps[start]} on, the other "
                          f"ranks' {rest:.3g} (bad data on this rank?)", rank=ranks[k], step=int(steps[start]),
                          stat="loss"))
    return found


def own_time(run, max_points=None, rank_summaries: dict | None = None):
    """(name, steps, ranks, [ranks, steps]) of each rank's own time per step: step_time less wait_time (its wait
    for the others in the all-reduce) when both are recorded, else busy_time, else step_time (under synchronous
    data parallelism every rank's step time is the slowest's); None when fewer than 2 ranks have any."""
    step = aligned_scalar(run, "step_time", max_points, rank_summaries)
    wait = aligned_scalar(run, "wait_time", max_points, rank_summaries)
    if step is not None and wait is not None and step[1] == wait[1]:
        common = np.intersect1d(step[0], wait[0])
        a = step[2][:, np.isin(step[0], common)]
        b = wait[2][:, np.isin(wait[0], common)]
        return "own time (step time less wait)", common, step[1], a - b
    for name in ("busy_time", "step_time"):
        got = aligned_scalar(run, name, max_points, rank_summaries)
        if got is not None:
            return (name, *got)
    return None


def check_time(run, max_points=None, rank_summaries: dict | None = None, before: int | None = None) -> list[Finding]:
    """The ranks the others wait for: own time (own_time) that stays above the other ranks' (beyond MAX_RANKS ranks
    on the rank summaries' trends, see aligned_scalar); before: only steps before this one (the first NaN/Inf:
    after it the training is broken and its timing says nothing of the ranks)."""
    got = own_time(run, max_points, rank_summaries)
    if got is None:
        return []
    name, steps, ranks, t = got
    keep = slice(1, None if before is None else int(np.searchsorted(steps, before)))
    steps, t = steps[keep], t[:, keep]  # step 0 holds the set-up
    if not len(steps):
        return []
    found = []
    for k, start in _outlier_onsets(t, SLOW_FACTOR, SLOW_MIN_SECONDS, SLOW_STAY).items():
        mine = float(detect.nanmedian(t[k, start:]))
        rest = float(detect.nanmedian(np.delete(t, k, axis=0)[:, start:]))
        found.append(make("slow_rank", f"rank {ranks[k]}: {name} {mine * 1e3:.1f} ms per step from step {steps[start]} "
                          f"on, {mine / rest:.2f}x the other ranks' {rest * 1e3:.1f} ms: the others wait for it",
                          rank=ranks[k], step=int(steps[start]),
                          stat="wait_time" if name.startswith("own") else name))
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


def check(ctx: Context) -> list[Finding]:
    first_nan = ctx.first("nonfinite")
    return (check_loss(ctx.run, ctx.max_points, ctx.rank_summaries)
            + check_time(ctx.run, ctx.max_points, ctx.rank_summaries, first_nan and first_nan.step)
            + check_status(ctx.run, ctx.rank_summaries))
