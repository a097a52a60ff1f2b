"""Pure functions from stored arrays to plotly figures; no trace holds more than MAX_POINTS points."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from tview.render.analysis import ema
from tview.render.ranks_view import TIME_SUFFIX
from tview.render.style import rank_colour, title_layout
from tview.store.reader import strided

MAX_POINTS = 2000        # per line trace
MAX_HEATMAP_ROWS = 1000  # steps shown in a step x something heatmap
_MARGIN = dict(l=60, r=20, t=40, b=50)


@dataclass
class Series:
    """One line: a name (a rank, a run, a layer) and its (steps, values)."""

    name: str
    steps: np.ndarray
    values: np.ndarray
    colour: str | None = None  # e.g. style.rank_colour(rank) for a rank's line
    first_bad: int | None = None  # its first NaN/Inf step where known exactly (the values may be every k-th only)


def _finite_or_none(values: np.ndarray) -> list:
    """plotly's JSON cannot carry NaN/Inf: they become gaps (None)."""
    v = np.asarray(values, dtype=np.float64)
    return [float(x) if math.isfinite(x) else None for x in v]


def titled(fig: go.Figure, title: str, **kw) -> go.Figure:
    """The title in a band of its own under the toolbar's row (style.title_layout), the margins around the plot."""
    spec, top = title_layout(title)
    margin = dict(_MARGIN, t=top, **kw.pop("margin", {}))
    kw.setdefault("uirevision", title)
    fig.update_layout(title=spec, margin=margin, template="plotly_white", **kw)
    return fig


CLOCKS = ("wall_time",)  # named like durations (ranks_view.TIME_SUFFIX) but clock readings: seconds since the epoch
OTHER_DURATIONS = ("tview_writer_cpu",)  # durations in seconds named otherwise (CPU seconds)


def is_duration(name: str) -> bool:
    """Whether scalar `name` holds durations in seconds (step_time, busy_time, wait_time, tview_writer_cpu, ...)."""
    return (name.endswith(TIME_SUFFIX) and name not in CLOCKS) or name in OTHER_DURATIONS


def duration_unit(seconds) -> tuple[float, str]:
    """(factor, unit) that durations are shown in, the one rule of every page: ms where the typical value (the median
    finite magnitude) is under a second, else s."""
    v = np.abs(np.asarray(seconds, dtype=np.float64))
    v = v[np.isfinite(v)]
    return (1e3, "ms") if not v.size or float(np.median(v)) < 1.0 else (1.0, "s")


def shown_units(name: str, values) -> tuple[float, float, str]:
    """(factor, offset, unit) scalar `name` is shown in, for all of `values`: a duration in ms or s (duration_unit),
    a clock (wall_time) in seconds from its earliest reading, anything else as it is with no unit ('')."""
    values = np.asarray(values, dtype=np.float64)
    if name in CLOCKS and np.isfinite(values).any():
        return 1.0, float(values[np.isfinite(values)].min()), "s from the first record"
    if not is_duration(name):
        return 1.0, 0.0, ""
    factor, unit = duration_unit(values)
    return factor, 0.0, unit


def in_units(name: str, values) -> tuple[np.ndarray, str]:
    """The values of scalar `name` as shown (shown_units), and their unit."""
    values = np.asarray(values, dtype=np.float64)
    factor, offset, unit = shown_units(name, values)
    return (values - offset) * factor, unit


def with_unit(text: str, unit: str) -> str:
    """An axis or colour-bar title with its unit: 'step_time (ms)'; the text alone where there is none."""
    return f"{text} ({unit})" if unit else text


def duration_text(seconds: float | None) -> str:
    """One duration as the tables write it, by duration_unit's rule: '8.2 ms', '1.50 s', '-' where there is none."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    factor, unit = duration_unit([seconds])
    return f"{seconds * factor:.1f} ms" if unit == "ms" else f"{seconds:.2f} s"


def _hover(unit: str) -> str:
    """A line's hover text: its step and value with the value's unit (the trace's name beside it)."""
    return "step %{x}<br>%{y:.4g}" + (f" {unit}" if unit else "")


def _layout(fig: go.Figure, title: str, x_title: str = "step", y_title: str = "", **kw) -> go.Figure:
    return titled(fig, title, xaxis_title=x_title, yaxis_title=y_title, **kw)


def warm_up() -> None:
    """Build one figure of each kind the dashboard's first pages draw: plotly loads its validators on first use
    (about 0.2 s), which a server does once at start rather than in its first request."""
    steps, values = np.arange(3), np.arange(27, dtype=np.float64).reshape(9, 3)
    for fig in (ranks_figure(steps, list(range(9)), values, "", named={0: "rank 0"}, focus=1),
                ranks_figure(steps, [0, 1], values[:2], ""), rank_heatmap_figure(steps, list(range(9)), values, "", ""),
                message_figure("")):
        fig.to_plotly_json()


def message_figure(message: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
    fig.update_layout(xaxis_visible=False, yaxis_visible=False, template="plotly_white", margin=_MARGIN)
    return fig


def line_figure(series: list[Series], title: str, y_title: str = "", log_y: bool = False, smoothing: float = 0.0,
                mark: dict[str, str] | None = None, unit: str = "") -> go.Figure:
    """Lines over steps, one per series; with smoothing > 0 the raw line stays, faint, under the smoothed one.
    mark: series name -> colour for lines to single out (e.g. the slowest rank); unit: the values' ('ms'), said on
    the y axis and in the hover text."""
    if not series:
        return message_figure("nothing recorded yet")
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    for i, s in enumerate(series):
        rows = strided(len(s.steps), MAX_POINTS)
        x, y = np.asarray(s.steps)[rows], np.asarray(s.values, dtype=np.float64)[rows]
        colour = (mark or {}).get(s.name) or s.colour or palette[i % len(palette)]
        if smoothing > 0:
            fig.add_trace(go.Scatter(x=x, y=_finite_or_none(y), mode="lines", name=f"{s.name} (raw)",
                                       line=dict(color=colour, width=1), opacity=0.25, showlegend=False,
                                       hoverinfo="skip"))
            y = np.where(np.isfinite(y), ema(y, smoothing), np.nan)  # no smoothed value carried over a NaN
        fig.add_trace(go.Scatter(x=x, y=_finite_or_none(y), mode="lines", name=s.name, hovertemplate=_hover(unit),
                                   line=dict(color=colour, width=3 if s.name in (mark or {}) else 1.5)))
    _mark_nonfinite(fig, series)
    _layout(fig, title, y_title=with_unit(y_title, unit), legend=dict(orientation="h", y=-0.2))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def _mark_nonfinite(fig: go.Figure, series: list) -> None:
    """A dotted line at the first NaN/Inf of each series that has one (one per step, naming the series there): a
    line that stops is otherwise read as a run that stopped."""
    at: dict[int, list[str]] = {}
    for s in series:
        if s.first_bad is not None:
            at.setdefault(int(s.first_bad), []).append(f"{s.name}: NaN/Inf")
            continue
        values = np.asarray(s.values, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            kind = "NaN" if np.isnan(values[bad[0]]) else "Inf"
            at.setdefault(int(np.asarray(s.steps)[bad[0]]), []).append(f"{s.name}: {kind}")
    for i, (step, names) in enumerate(sorted(at.items())[:4]):  # each text a line below the one before
        shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        mark_step(fig, step, f"{shown} from step {step}", line=i)


def mark_step(fig: go.Figure, step: int, text: str, steps_down: bool = False, line: int = 0) -> go.Figure:
    """A red dotted line at `step` with `text` beside it (the first NaN/Inf: values stop, histograms empty there):
    across the figure where steps run along x, along it where they run down (`steps_down`, histograms)."""
    style = dict(line=dict(color="#d62728", dash="dot", width=1))
    note = dict(text=text, font=dict(color="#d62728", size=11), showarrow=False)
    if steps_down:
        fig.add_hline(y=step, **style, annotation=note, annotation_position="top left")
    else:
        fig.add_vline(x=step, **style, annotation=dict(note, y=1 - 0.07 * line, yref="paper", yanchor="top",
                                                       xanchor="left"))
    return fig


def heatmap_figure(steps: np.ndarray, labels: list[str], values: np.ndarray, title: str,
                   colour_title: str = "", log: bool = False) -> go.Figure:
    """A step x label heatmap (values [steps, labels]), labels on the y axis, only the labels with a value (a
    statistic not measured on a layer gets no empty row); log colours on request."""
    values = np.asarray(values, dtype=np.float64)
    measured = np.isfinite(values).any(axis=0) if values.ndim == 2 else np.zeros(0, dtype=bool)
    if values.size == 0 or not measured.any():
        return message_figure("nothing recorded yet")
    labels, values = [label for label, m in zip(labels, measured) if m], values[:, measured]  # no empty rows
    rows = strided(values.shape[0], MAX_HEATMAP_ROWS)
    z = values[rows].T
    if log:
        with np.errstate(all="ignore"):
            z = np.where(z > 0, np.log10(z), np.nan)
        colour_title = f"log10 {colour_title}"
    fig = go.Figure(go.Heatmap(x=np.asarray(steps)[rows], y=list(labels), z=[_finite_or_none(r) for r in z],
                               colorscale="Viridis", colorbar=dict(title=colour_title), hoverongaps=False))
    return _layout(fig, title, y_title="layer")


HIST_MARGIN = 1  # empty bins a histogram keeps either side of the bins that hold counts
HIST_GAP = 3     # beyond the margins, a stretch of this many empty bins or more is drawn as one blank column
HistColumn = int | tuple[int, int]  # a bin's index, or (first, last) of a stretch of empty bins left out


def histogram_columns(used, margin: int = HIST_MARGIN, gap: int = HIST_GAP) -> list[HistColumn]:
    """The columns a histogram draws, left to right, from a per-bin flag of the bins holding counts: each such bin and
    `margin` bins either side; a stretch of `gap` or more other bins between two of them becomes one column
    (first, last), shorter stretches stay as they are. [] where no bin holds a count."""
    used = np.asarray(used, dtype=bool)
    keep = np.convolve(used, np.ones(2 * margin + 1))[margin:margin + len(used)] > 0  # (any bin count, few too)
    if not keep.any():
        return []
    first, last = np.flatnonzero(keep)[[0, -1]]
    columns: list[HistColumn] = []
    skipped: list[int] = []
    for i in range(int(first), int(last) + 1):
        if not keep[i]:
            skipped.append(i)
            continue
        columns += [(skipped[0], skipped[-1])] if len(skipped) >= gap else skipped
        columns.append(i)
        skipped = []
    return columns


def edge_text(v: float) -> str:
    """A bin edge as the histogram's axis writes it: '1e-8', '-3.2e-3', '0'."""
    if v == 0:
        return "0"
    mantissa, exponent = f"{abs(v):.1e}".split("e")
    return f"{'-' if v < 0 else ''}{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def held_edges(edges: np.ndarray) -> np.ndarray:
    """The bin edges as the bins hold values: the middle bin's two edges are 0 (it holds exact zeros alone, the bins
    beside it every smaller magnitude down to 0)."""
    out = np.asarray(edges, dtype=np.float64).copy()
    middle = np.flatnonzero((out[:-1] < 0) & (out[1:] > 0))
    out[middle], out[middle + 1] = 0.0, 0.0
    return out


def bin_text(edges: np.ndarray, column: HistColumn) -> str:
    """What one column of the histogram holds (its hover text and its name on the x axis), from held_edges: the values
    from one edge to the next (0 itself only in the middle bin), the outermost bins also larger magnitudes; a
    left-out stretch, no values at all."""
    if isinstance(column, tuple):
        return f"no values from {edge_text(edges[column[0]])} to {edge_text(edges[column[1] + 1])}"
    lo, hi, last = edges[column], edges[column + 1], len(edges) - 2
    if lo == hi == 0:
        return "exactly 0"
    if column in (0, last):
        return f"{edge_text(hi)} and below" if column == 0 else f"{edge_text(lo)} and above"
    return f"{edge_text(lo)} to {edge_text(hi)}" + (" (0 excluded)" if 0 in (lo, hi) else "")


def _is_decade(v: float) -> bool:
    return v != 0 and abs(math.log10(abs(v)) - round(math.log10(abs(v)))) < 1e-9


def _edge_ticks(edges: np.ndarray, columns: list[HistColumn], k: int, zero_shown: bool) -> dict[float, str]:
    """The ticks on bin column k's two edges: a power of ten, or an end of the drawn range or of a left-out stretch;
    an edge at 0 only where the zero bin is not drawn (it has its own '0')."""
    col, ticks = columns[k], {}
    ends = (k == 0 or isinstance(columns[k - 1], tuple), k == len(columns) - 1 or isinstance(columns[k + 1], tuple))
    for at, v, end in ((k - 0.5, edges[col], ends[0]), (k + 0.5, edges[col + 1], ends[1])):
        if (end and not (v == 0 and zero_shown)) or _is_decade(v):
            ticks[at] = edge_text(v)
    return ticks


def histogram_ticks(edges: np.ndarray, columns: list[HistColumn]) -> tuple[list[float], list[str]]:
    """Tick positions (column k spans k - 0.5 to k + 0.5) and labels, true values of held_edges `edges`: the edges
    that are powers of ten, the edges at both ends and beside a left-out stretch, and '0' on the zero bin."""
    zero_shown = any(_zero_bin(edges, c) for c in columns)
    ticks: dict[float, str] = {}
    for k, col in enumerate(columns):
        if isinstance(col, tuple):
            ticks[k - 0.5], ticks[k + 0.5] = edge_text(edges[col[0]]), edge_text(edges[col[1] + 1])
        elif _zero_bin(edges, col):
            ticks[float(k)] = "0"
        else:
            ticks = {**_edge_ticks(edges, columns, k, zero_shown), **ticks}
    positions = sorted(ticks)
    return positions, [ticks[p] for p in positions]


def _zero_bin(edges: np.ndarray, column: HistColumn) -> bool:
    """Whether a column is the middle bin, exact zeros (of held_edges `edges`: both its edges 0)."""
    return not isinstance(column, tuple) and edges[column] == edges[column + 1] == 0


def _column_counts(counts: np.ndarray, columns: list[HistColumn]) -> np.ndarray:
    """counts [steps, bins] as [steps, columns]: NaN in a left-out stretch's column and on a step with no value in
    any bin (its values all NaN/Inf): drawn blank, not as zero counts."""
    shown = np.stack([np.full(len(counts), np.nan) if isinstance(c, tuple) else counts[:, c] for c in columns], 1)
    shown[counts.sum(axis=1) == 0] = np.nan
    return shown


def histogram_figure(steps: np.ndarray, edges: np.ndarray, counts: np.ndarray, title: str) -> go.Figure:
    """Histograms over time (TensorBoard's 'distributions' as a heatmap): steps down, value bins across,
    colour = log10(1 + count). Only the bins that hold counts show, a bin either side (histogram_columns), stretches
    of empty bins between them as one blank column; the ticks are the true bin edges. A step with no value in any
    bin (NaN/Inf there) is a blank row, not a row of zero counts; values all exactly 0 are said in the title."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0 or counts.sum() == 0:
        return message_figure("no histogram recorded yet for this layer")
    rows = strided(counts.shape[0], MAX_HEATMAP_ROWS)
    counts, steps, edges = counts[rows], np.asarray(steps)[rows], held_edges(edges)
    used = np.flatnonzero(counts.sum(axis=0) > 0)
    columns = histogram_columns(counts.sum(axis=0) > 0)
    shown = _column_counts(counts, columns)
    with np.errstate(invalid="ignore"):
        z = np.log10(1 + shown)
    fig = go.Figure(go.Heatmap(x=[bin_text(edges, c) for c in columns], y=steps, z=[_finite_or_none(r) for r in z],
                               customdata=[_finite_or_none(r) for r in shown], colorscale="Magma",
                               colorbar=dict(title="log10(1+n)"), hoverongaps=False,
                               hovertemplate="step %{y}<br>%{x}<br>%{customdata:.0f} values<extra></extra>"))
    zero_only = len(used) == 1 and _zero_bin(edges, int(used[0]))
    gaps = any(isinstance(c, tuple) for c in columns)
    _layout(fig, title + ("<br>every value is exactly 0" if zero_only else ""), y_title="step",
            x_title="value (signed log bins" + ("; a blank column: empty bins left out)" if gaps else ")"))
    positions, labels = histogram_ticks(edges, columns)
    fig.update_xaxes(type="category", tickmode="array", tickvals=positions, ticktext=labels, tickangle=-90)
    return fig


def bar_figure(labels: list[str], values: list[float], title: str, y_title: str = "",
               highlight: str | None = None) -> go.Figure:
    """Bars, one highlighted (e.g. the slowest rank) in red."""
    colours = ["#d62728" if label == highlight else "#1f77b4" for label in labels]
    fig = go.Figure(go.Bar(x=labels, y=_finite_or_none(values), marker_color=colours))
    return _layout(fig, title, x_title="", y_title=y_title)


HEATMAP_CELLS = 250_000  # ranks x steps cells in a rank x step heatmap: 1024 ranks keep about 240 steps
_FOCUS_COLOUR = "#111111"  # the focused rank's outline in a heatmap
_BAND_FILL = {("min", "max"): "rgba(90,90,90,0.12)", ("5%", "95%"): "rgba(90,90,90,0.26)"}  # grey: no rank's colour


def _band_traces(steps: np.ndarray, bands: dict[str, np.ndarray], unit: str = "") -> list[go.Scatter]:
    """min-max and 5%-95% as filled areas, the median as a line: legend entries 'min-max', '5%-95%', 'median'."""
    suffix = f" {unit}" if unit else ""
    traces = []
    for lo, hi in _BAND_FILL:
        fill = _BAND_FILL[(lo, hi)]
        traces.append(go.Scatter(x=steps, y=_finite_or_none(bands[lo]), mode="lines", line=dict(width=0),
                                 showlegend=False, hoverinfo="skip", legendgroup=f"{lo}-{hi}"))
        traces.append(go.Scatter(x=steps, y=_finite_or_none(bands[hi]), mode="lines", line=dict(width=0),
                                 fill="tonexty", fillcolor=fill, name=f"{lo}-{hi} of ranks", legendgroup=f"{lo}-{hi}",
                                 hovertemplate=f"{hi} %{{y:.4g}}{suffix}<extra></extra>"))
    traces.append(go.Scatter(x=steps, y=_finite_or_none(bands["median"]), mode="lines", name="median rank",
                             line=dict(color="#555555", width=2),
                             hovertemplate=f"median %{{y:.4g}}{suffix}<extra></extra>"))
    return traces


def ranks_figure(steps: np.ndarray, ranks: list[int], values: np.ndarray, title: str, y_title: str = "",
                 named: dict[int, str] | None = None, focus: int | None = None, log_y: bool = False,
                 unit: str = "") -> go.Figure:
    """One quantity on every rank (values [ranks, steps]). Up to ranks_view.LINES_UP_TO ranks: one line per
    rank; beyond: quantile bands (min, 5%, median, 95%, max over ranks) and a named line for each rank in
    `named` (rank -> label, e.g. 'rank 7 (slowest)') and for the focused rank. unit: the values' ('ms'), said on
    the y axis and in the hover text."""
    from tview.render import ranks_view
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).any():
        return message_figure("nothing recorded yet")
    cols = strided(values.shape[1], MAX_POINTS)
    x, values = np.asarray(steps)[cols], values[:, cols]
    row = {r: i for i, r in enumerate(ranks)}
    named = {r: label for r, label in (named or {}).items() if r in row}  # a rank not drawn is not named
    if focus is not None and focus in ranks:
        named.setdefault(focus, f"rank {focus}")
    fig = go.Figure()
    if len(ranks) <= ranks_view.LINES_UP_TO:
        for i, r in enumerate(ranks):
            if r not in named:
                fig.add_trace(go.Scatter(x=x, y=_finite_or_none(values[i]), mode="lines", name=f"rank {r}",
                                         hovertemplate=_hover(unit), line=dict(color=rank_colour(r), width=1.5)))
    else:
        for trace in _band_traces(x, ranks_view.quantile_bands(values), unit):
            fig.add_trace(trace)
    for r, label in sorted(named.items(), key=lambda kv: kv[0] != focus):  # named ranks: their colour, drawn wider
        dash = "solid" if r == focus or len(ranks) <= ranks_view.LINES_UP_TO else "dot"
        fig.add_trace(go.Scatter(x=x, y=_finite_or_none(values[row[r]]), mode="lines", name=label,
                                 hovertemplate=_hover(unit),
                                 line=dict(color=rank_colour(r), width=3.5 if r == focus else 2.5, dash=dash)))
    _layout(fig, title, y_title=with_unit(y_title, unit), legend=dict(orientation="h", y=-0.2))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def rank_heatmap_figure(steps: np.ndarray, ranks: list[int], values: np.ndarray, title: str,
                        colour_title: str = "", log: bool = False, focus: int | None = None,
                        unit: str = "") -> go.Figure:
    """A rank x step heatmap (values [ranks, steps]), ranks down, at most HEATMAP_CELLS cells; the focused
    rank's row is outlined. Clicking a cell gives its rank as the point's y. unit: the values' ('ms'), said on
    the colour bar and in the hover text."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).any():
        return message_figure("nothing recorded yet")
    cols = strided(values.shape[1], max(20, HEATMAP_CELLS // max(len(ranks), 1)))
    z = values[:, cols]
    colour_title = with_unit(colour_title, unit)
    if log:
        with np.errstate(all="ignore"):
            z = np.where(z > 0, np.log10(z), np.nan)
        colour_title = f"log10 {colour_title}"
    z = np.where(np.isfinite(z), z, np.nan).astype(np.float32)  # sent as typed array: NaN is a gap
    fig = go.Figure(go.Heatmap(x=np.asarray(steps)[cols], y=np.asarray(ranks), z=z, colorscale="Viridis",
                               colorbar=dict(title=colour_title), hoverongaps=False,
                               hovertemplate=f"rank %{{y}}<br>step %{{x}}<br>{colour_title} %{{z:.4g}}<extra></extra>"))
    _layout(fig, title, y_title="rank")
    fig.update_yaxes(autorange="reversed", tickformat="d")
    if len(ranks) <= 32:  # a tick on every rank, none between two
        fig.update_yaxes(tickmode="array", tickvals=list(ranks))
    if focus is not None and focus in ranks:
        fig.add_hrect(y0=focus - 0.5, y1=focus + 0.5, line=dict(color=_FOCUS_COLOUR, width=2),
                      fillcolor="rgba(0,0,0,0)")
    return fig


_GAP_RGB = ["214,39,40", "255,127,14", "148,103,189", "127,127,127"]  # one per reason an estimate is undefined
MAX_SPANS = 200  # shaded undefined stretches drawn; beyond, the legend still counts every undefined step


def _span_edges(steps: np.ndarray, first: int, last: int) -> tuple[float, float]:
    """A stretch of steps widened by half a recording interval each side (a single step gets a visible band)."""
    half = float(np.median(np.diff(steps))) / 2 if len(steps) > 1 else 0.5
    return first - half, last + half


def noise_scale_figure(steps: np.ndarray, values: np.ndarray, spans: list[tuple[int, int, str]], title: str,
                       batch: float | None = None, critical: float | None = None) -> go.Figure:
    """The gradient noise scale B_simple over steps (log y), the stretches where it is undefined shaded with one
    colour per reason (the legend names each reason and its step count), the batch size in use and the critical
    batch size as horizontal lines."""
    values = np.asarray(values, dtype=np.float64)
    steps = np.asarray(steps)
    if not len(steps):
        return message_figure("no steps with gradient norms on every rank yet")
    rows = strided(len(steps), MAX_POINTS)
    fig = go.Figure(go.Scatter(x=steps[rows], y=_finite_or_none(values[rows]), mode="lines", name="B_simple",
                               line=dict(color="#1f77b4", width=2), hovertemplate="step %{x}<br>B_simple %{y:.4g}"
                               "<extra></extra>"))
    colour: dict[str, str] = {}
    counted: dict[str, int] = {}
    for k, (first, last, why) in enumerate(spans):
        colour.setdefault(why, _GAP_RGB[len(colour) % len(_GAP_RGB)])
        counted[why] = counted.get(why, 0) + int(np.count_nonzero((steps >= first) & (steps <= last)))
        if k < MAX_SPANS:
            x0, x1 = _span_edges(steps, first, last)
            fig.add_vrect(x0=x0, x1=x1, fillcolor=f"rgba({colour[why]},0.15)", line_width=0, layer="below")
    for why, c in colour.items():  # legend entries for the shading (shapes have none)
        n = counted[why]
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers",
                                 name=f"undefined: {why} ({n} step{'s' * (n != 1)})",
                                 marker=dict(symbol="square", size=12, color=f"rgba({c},0.5)")))
    for y, text, dash in ((batch, "batch size in use", "dash"), (critical, "critical batch size", "dot")):
        if y is not None and math.isfinite(y) and y > 0:  # traces, not hline annotations (log-unit y on a log axis)
            fig.add_trace(go.Scatter(x=[steps[0], steps[-1]], y=[y, y], mode="lines", name=f"{text} {y:.4g}",
                                     line=dict(color="#555555", dash=dash, width=1.5), hoverinfo="name"))
    _layout(fig, title, y_title="examples", legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(type="log")
    if not np.isfinite(values).any():
        fig.add_annotation(text="undefined at every step: see the shading's reasons", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font=dict(size=14))
    return fig
