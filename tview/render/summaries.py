"""What the overview and rank views need from a Run: small dicts and arrays, read downsampled."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from tview.render import ranks_view
from tview.store.rank_summary import RankSummary, first_nonfinite_key, trend_arrays
from tview.store.reader import Run

LIVE_SECONDS = 120.0  # a rank that wrote within this many seconds and has not closed is live


def rank_rows(run: Run, rank_summaries: dict[int, RankSummary] | None = None) -> list[dict]:
    """One dict per rank: steps, last step, state (closed, live, stopped, unreadable), wall time, problem
    (rank_summaries: run.rank_summaries(), when the caller has read them)."""
    rows = []
    now = time.time()
    for rank, s in (rank_summaries if rank_summaries is not None else run.rank_summaries()).items():
        row = {"rank": rank, "steps": s.steps, "last_step": s.last_step, "dropped": s.dropped,
               "problem": s.problem, "wall_seconds": None, "state": "unreadable" if s.problem else "closed"}
        if s.problem is None and s.steps:
            row["wall_seconds"] = s.wall_seconds
            if not s.closed:
                row["state"] = "live" if now - s.last_wall < LIVE_SECONDS else "stopped"
        elif s.problem is None:
            row["state"] = "no steps yet" if not s.closed else "closed"
        rows.append(row)
    return rows


def is_live(rows: list[dict]) -> bool:
    return any(r["state"] == "live" for r in rows)


def run_summary(run: Run, rows: list[dict] | None = None) -> dict:
    """Ranks, steps, layers, wall time and what was recorded, for the overview (rows: rank_rows(run),
    when the caller has them)."""
    rows = rows if rows is not None else rank_rows(run)
    m = run.manifest
    walls = [r["wall_seconds"] for r in rows if r["wall_seconds"] is not None]
    return {
        "path": run.path, "model": m.get("model"), "world_size": run.world_size, "ranks": rows,
        "readable_ranks": run.ranks, "layers": len(run.layers),
        "steps": max((r["steps"] for r in rows), default=0),
        "last_step": max((r["last_step"] for r in rows if r["last_step"] is not None), default=None),
        "wall_seconds": max(walls) if walls else None, "live": is_live(rows),
        "preset": m.get("preset"), "schedule": schedule_text(m), "snapshots": m.get("snapshot_schedule"),
        "filter_layers": m.get("filter_layers", []), "probe_layers": m.get("probe_layers", []),
        "problems": dict(run.problems),
    }


def schedule_text(manifest: dict) -> str:
    """The run's schedule as the Overview and `tview info` say it: 'every(10)', and with a budget
    'every(1) within a 5% budget'."""
    budget = manifest.get("budget")
    return f"{manifest.get('schedule')}" + (f" within a {budget:.0%} budget" if budget else "")


# -- from the per-rank summaries (run.rank_summaries(): small files, no shard opened) ----------------------

def compact(rank_summaries: dict) -> dict[int, RankSummary]:
    """rank_summaries (RankSummary, or their fields as dicts) with each trend's series as numpy arrays (a tenth of
    the memory of JSON lists: what a server keeps between requests)."""
    out = {}
    for rank, s in rank_summaries.items():
        s = s if isinstance(s, RankSummary) else RankSummary.from_dict(s)
        trend = s.trend
        if trend:
            trend = {k: (v if k == "stride" else np.asarray(v, dtype=np.int64 if k == "step" else np.float64))
                     for k, v in trend.items()}
        out[rank] = replace(s, trend=trend)
    return out


def trend_names(rank_summaries: dict[int, RankSummary]) -> list[str]:
    """The series the ranks' trends keep (loss, step_time, grad_norm, ...), sorted; step and wall_time left out."""
    names = {k for s in rank_summaries.values() if s.trend for k in s.trend}
    return sorted(names - {"stride", "step", "wall_time"})


def trend_across_ranks(rank_summaries: dict[int, RankSummary], name: str, ranks: list[int]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One trend series (loss, step_time, grad_norm, ...) of `ranks` from their summaries, on one step grid:
    (steps, values [len(ranks), steps]) as stat_across_ranks, NaN where a rank has no value (or no summary)."""
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0))
    series = []
    for rank in ranks:
        s = rank_summaries.get(rank)
        series.append(trend_arrays(s, name) if s is not None and s.trend else empty)
    return ranks_view.align_to_grid(series)


def trend_medians(rank_summaries: dict[int, RankSummary], name: str) -> dict[int, float | None]:
    """Per rank with a summary, the median of one trend series over its finite points (None: none)."""
    out = {}
    for rank, s in rank_summaries.items():
        if s.trend:
            _, v = trend_arrays(s, name)
            v = v[np.isfinite(v)]
            out[rank] = float(np.median(v)) if len(v) else None
    return out


def other_trend_times(rank_summaries: dict[int, RankSummary]) -> dict[str, dict[int, float | None]]:
    """As other_times, from the summaries: per duration series other than step_time, each rank's median."""
    names = [n for n in trend_names(rank_summaries) if n.endswith(ranks_view.TIME_SUFFIX) and n != "step_time"]
    return {name: trend_medians(rank_summaries, name) for name in names}


def summary_table(rows: list[dict], rank_summaries: dict[int, RankSummary]) -> list[dict]:
    """ranks_table from the summaries: rank_rows with each rank's median step time (its trend's), the share of its
    time tview took (tview_share) and first NaN/Inf step (exact: the writer keeps it), worst first."""
    times, shares = trend_medians(rank_summaries, "step_time"), tview_shares(rank_summaries)
    out = []
    for row in rows:
        s = rank_summaries.get(row["rank"])
        key = s.first_nonfinite_key() if s is not None else None
        out.append({**row, "step_time": times.get(row["rank"]), "tview_share": shares.get(row["rank"]),
                    "first_nan": key[0] if key else None, "first_nan_key": key})
    return ranks_view.worst_first(out)


def tview_shares(rank_summaries: dict[int, RankSummary]) -> dict[int, float | None]:
    """Per rank with a summary, the share of its time tview took on the training thread over the later half of its
    recorded wall time (where a budget has settled its stride): the records' tview_time (each since the record
    before; the trend holds every stride-th record, so stride times its points' sum) over that time. None where
    tview_time was not recorded (a run older than it) or the trend is too short to say. Step times would not do:
    where not every step is recorded, step() of a recorded step ends in an unrecorded step's step_time."""
    return {rank: _later_share(s) if s.trend else None for rank, s in rank_summaries.items()}


def _later_share(s: RankSummary) -> float | None:
    _, own = trend_arrays(s, "tview_time")
    wall = np.asarray(s.trend["wall_time"], dtype=np.float64)
    if len(wall) < 3 or not np.isfinite(own).any():
        return None
    first = max(1, int(np.searchsorted(wall, (wall[0] + wall[-1]) / 2, side="right")))
    first = min(first, len(wall) - 1)
    span = wall[-1] - wall[first - 1]
    return float(np.nansum(own[first:]) * s.trend["stride"] / span) if span > 0 else None


def first_scalar_nonfinite(rank_summaries: dict[int, RankSummary], name: str) -> tuple[int, int] | None:
    """(step, rank) of the earliest NaN/Inf of scalar `name` on any rank, exact (the writers keep it); None if none."""
    found = [(int(s.first_nonfinite["scalars"][name]), rank) for rank, s in rank_summaries.items()
             if s.first_nonfinite and name in s.first_nonfinite.get("scalars", {})]
    return min(found) if found else None


def share_text(share: float | None) -> str:
    """A tview_share as the tables show it: '12.5%', or '-' where not recorded."""
    return "-" if share is None else f"{share:.1%}"


def summary_standouts(ranks: list[int], table: list[dict], rank_summaries: dict[int, RankSummary],
                      values: np.ndarray | None = None) -> dict[int, list[str]]:
    """ranks_view.standouts from a summary_table and the summaries (values [ranks, steps]: a trend across ranks
    for 'most divergent', or None)."""
    return ranks_view.standouts(ranks, values, step_time={r["rank"]: r["step_time"] for r in table},
                                first_bad={r["rank"]: r["first_nan_key"] for r in table},
                                other_times=other_trend_times(rank_summaries))


# -- across ranks: every read of one quantity on every rank goes through the functions below, so that a
# reader able to gather across ranks at once (in parallel, from per-rank summaries) replaces their bodies.

def _whole_network(run: Run, name: str, rank: int, max_points: int | None):
    """(steps, value per step) of a per-layer statistic over the whole network: the total norm for *_norm
    statistics, the mean over layers otherwise."""
    steps, m = run.stat_matrix(name, rank, max_points=max_points)
    m = np.ma.filled(np.ma.asarray(m, dtype=np.float64), np.nan)
    if name.endswith("_norm"):
        return steps, np.sqrt(total_norm_sq(m))
    with np.errstate(all="ignore"):
        finite = np.isfinite(m)
        count = finite.sum(axis=1)
        return steps, np.where(count > 0, np.where(finite, m, 0).sum(axis=1) / np.maximum(count, 1), np.nan)


def stat_across_ranks(run: Run, name: str, layer: str | None, max_points: int | None = 1000
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One per-layer statistic of one layer (None: the whole network) on every readable rank, on one step
    grid: (steps, values [len(run.ranks), steps]), NaN where a rank has no value near a grid step."""
    if layer is None:
        return ranks_view.align_to_grid([_whole_network(run, name, rank, max_points) for rank in run.ranks])
    return ranks_view.align_to_grid(list(run.stat_across_ranks(name, layer, max_points=max_points).values()))


def scalar_across_ranks(run: Run, name: str, max_points: int | None = 1000) -> tuple[np.ndarray, np.ndarray]:
    """One scalar (loss, step_time, ...) on every readable rank, as stat_across_ranks; NaN rows for ranks
    that lack it."""
    return ranks_view.align_to_grid(list(run.scalar_across_ranks(name, max_points=max_points).values()))


def first_nonfinite_per_rank(run: Run) -> dict[int, dict[str, dict[str, int]]]:
    """{rank: run.first_nonfinite(rank)} for every readable rank."""
    return {rank: run.first_nonfinite(rank) for rank in run.ranks}


def median_scalar(run: Run, name: str, max_points: int = 1000) -> dict[int, float | None]:
    """Per readable rank, the median of one scalar (None if it recorded none)."""
    _, values = scalar_across_ranks(run, name, max_points)
    out = {}
    for i, rank in enumerate(run.ranks):
        v = values[i][np.isfinite(values[i])] if values.size else values[i]
        out[rank] = float(np.median(v)) if len(v) else None
    return out


def median_step_times(run: Run, max_points: int = 1000) -> dict[int, float | None]:
    """Per readable rank, its median step time in seconds (None if it recorded none)."""
    return median_scalar(run, "step_time", max_points)


def other_times(run: Run, max_points: int = 200) -> dict[str, dict[int, float | None]]:
    """Per duration scalar other than step_time that the run recorded (data_time, ...: names ending in
    ranks_view.TIME_SUFFIX, as the first readable rank lists them), each rank's median."""
    names = sorted(n for n in (run.scalar_names(run.ranks[0]) if run.ranks else [])
                   if n.endswith(ranks_view.TIME_SUFFIX) and n not in ("step_time", "wall_time"))
    return {name: median_scalar(run, name, max_points) for name in names}


def ranks_table(run: Run, rows: list[dict] | None = None, max_points: int = 200,
                first: dict | None = None) -> list[dict]:
    """rank_rows with each rank's median step time and first NaN/Inf step added, worst first
    (first: first_nonfinite_per_rank(run), when the caller has read it)."""
    rows = [dict(r) for r in (rows if rows is not None else rank_rows(run))]
    times = median_step_times(run, max_points)
    first = first if first is not None else first_nonfinite_per_rank(run)
    for row in rows:
        row["step_time"] = times.get(row["rank"])
        row["first_nan_key"] = key = first_nonfinite_key(first.get(row["rank"]))
        row["first_nan"] = key[0] if key else None
    return ranks_view.worst_first(rows)


def total_norm_sq(matrix: np.ndarray) -> np.ndarray:
    """Per step, the squared norm over all layers from per-layer norms [steps, layers] (NaN layers skipped);
    NaN where no layer has a value."""
    m = np.asarray(matrix, dtype=np.float64)
    finite = np.isfinite(m)
    return np.where(finite.any(axis=1), np.where(finite, m * m, 0).sum(axis=1), np.nan)


def aligned(series: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Restrict several ranks' (steps, values) to the steps they all have."""
    common = None
    for steps, _ in series.values():
        common = steps if common is None else np.intersect1d(common, steps)
    if common is None:
        return np.zeros(0, dtype=np.int64), {}
    return common, {r: v[np.isin(s, common)] for r, (s, v) in series.items()}


def channel_values_at(run: Run, stat: str, step: int | None, rank: int):
    """Per layer with per-channel values, the latest measured row at or before `step` (None: the last):
    (layers, [values per layer], steps they come from)."""
    layers, values, at = [], [], []
    try:
        with_channels = [layer["name"] for layer in run.layer_info if layer.get("channels")]
        rows = run.channel_rows_at(stat, step, rank, with_channels)
    except KeyError:
        rows = {}
    for layer, (found_at, found) in rows.items():
        layers.append(layer)
        values.append(found)
        at.append(found_at)
    return layers, values, at


def channel_values_shown(run: Run, stat: str, step: int | None, rank: int):
    """channel_values_at, and the layers whose output held NaN/Inf there (blanked_by_nonfinite): their values NaN
    (drawn blank, not as the 0 zeros a NaN output has), named as the fourth item."""
    layers, values, at = channel_values_at(run, stat, step, rank)
    bad_at = {a: set(blanked_by_nonfinite(run, stat, a, rank)) for a in set(at)}  # at each layer's own row's step
    bad = [layer for layer, a in zip(layers, at) if layer in bad_at[a]]
    return layers, [np.full(len(v), np.nan) if layer in bad else v for layer, v in zip(layers, values)], at, bad


def blanked_by_nonfinite(run: Run, stat: str, row_step: int | None, rank: int) -> list[str]:
    """The layers whose activation statistic `stat`, read from a row at `row_step`, is not what the layer did: its
    output held NaN/Inf there (the NaN/Inf counts themselves, and statistics of other tensors, never)."""
    if row_step is None or reads_of(run, stat) != "activation" or stat in ("act_nan", "act_inf"):
        return []
    return nonfinite_activations_at(run, row_step, rank)


def nonfinite_activations_at(run: Run, step: int | None, rank: int) -> list[str]:
    """The layers whose output held NaN/Inf in the activation row at or before `step` (None: the last): their
    per-channel statistics there (a zero fraction of 0, a NaN mean) are not what the layer did."""
    names = [n for n in ("act_nan", "act_inf") if n in run.stat_names()]
    if not names:  # a run without the counts
        return []
    rows = run.layer_rows_at(names, step, rank)
    bad = np.zeros(len(run.layers), dtype=bool)
    for _, counts in rows.values():
        bad |= np.ma.filled(np.ma.asarray(counts, dtype=np.float64), 0.0) != 0
    return [layer for layer, b in zip(run.layers, bad) if b]


def summed_trajectory(run: Run, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole network's path: every layer's projections summed, which is the projection of all
    parameters on one random direction per axis (each layer's directions are independent)."""
    steps, t = run.trajectories(rank)
    if not t.size:
        return steps, np.zeros((0, int(run.manifest.get("trajectory_dims", 3))))
    return steps, sum_layers(t)


PARAM_READS = ("gradient", "local_gradient", "weight")


def no_values_reason(run: Run, name: str, layer: str) -> str | None:
    """Why a statistic or histogram kind `name` can have no value for `layer` at any step: it reads parameters and
    the layer holds none of its own (a ReLU); None otherwise (then an empty figure means not recorded yet)."""
    reads = reads_of(run, name)
    info = next((i for i in run.layer_info if i.get("name") == layer), None)
    if reads in PARAM_READS and info is not None and info.get("params", 1) == 0:  # (a PReLU has a weight)
        return (f"{layer} holds no parameters of its own: it has no {reads.replace('_', ' ')} statistics "
                f"(pick a layer with parameters)")
    return None


def reads_of(run: Run, name: str) -> str | None:
    """What the table holding statistic or histogram kind `name` reads ('gradient', 'activation', ...)."""
    return next((spec.reads for spec in run.tables().values() if any(c.name == name for c in spec.columns)), None)


def first_nonfinite_of(run: Run, name: str, ranks: list[int], layer: str | None = None) -> tuple[int, str] | None:
    """(step, layer) where the tensor statistic `name` reads (of `layer`, or of any layer) first held NaN/Inf on
    any of `ranks`, as the writers kept it (exact, no scan); None where it never did. A figure of that statistic
    marks it: after it the values are NaN (gaps) or the histograms empty, read otherwise as not recorded."""
    reads, found = reads_of(run, name), []
    for rank in ranks:
        try:
            where = run.first_nonfinite(rank).get("tensors", {}).get(reads, {})
        except Exception:  # an unreadable rank: its figure says so elsewhere
            continue
        found += [(int(step), at) for at, step in where.items() if layer is None or at == layer]
    order = {n: k for k, n in enumerate(run.layers)}
    return min(found, key=lambda f: (f[0], order.get(f[1], 0))) if found else None


def sum_layers(t: np.ndarray) -> np.ndarray:
    """[steps, dims] sums over the layers of t [steps, layers, dims], over the layers with a trajectory (finite at
    some step); NaN at a step where one of them is NaN/Inf (the weights went non-finite: the path ends there, it
    does not fall to the origin)."""
    t = np.asarray(t, dtype=np.float64)
    has = np.isfinite(t).any(axis=(0, 2))
    with np.errstate(invalid="ignore", over="ignore"):
        total = t[:, has].sum(axis=1)
    return np.where(np.isfinite(total), total, np.nan)


def nonfinite_snapshot_text(values, what: str, step: int, first: int | None = None) -> str | None:
    """Why a snapshot's picture would be blank: `what` ("conv1's weights") held no finite value at `step` (first: the
    step its tensor first held NaN/Inf, where known); None where some value is finite."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or np.isfinite(v).any():
        return None
    since = f" (NaN/Inf from step {first} on)" if first is not None else ""
    return f"{what} are all NaN/Inf at step {step}{since}: nothing to draw; pick an earlier step"


def first_nonfinite_tensor(run: Run, reads: str, layer: str, rank: int) -> int | None:
    """The step at which `layer`'s tensor read as `reads` ('weight', 'activation', ...) first held NaN/Inf on `rank`
    (exact: the writer keeps it), or None."""
    step = run.first_nonfinite(rank).get("tensors", {}).get(reads, {}).get(layer)
    return None if step is None else int(step)
