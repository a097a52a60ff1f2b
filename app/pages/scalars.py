"""Scalars: loss, learning rate, step time, memory, ... over steps, one line per rank, several runs overlaid."""

from __future__ import annotations

import dataclasses

import numpy as np
from dash import Input, Output, State, callback, dcc, html

from tview.render import figures, ranks_view, summaries
from tview.render.style import rank_colour, use_log

from ..common import (
    SCALE_OPTIONS,
    asked,
    catalog,
    control,
    figures_or_message,
    focused,
    graph,
    keep_choice,
    log,
    memo_read,
    options,
)

layout = html.Div([
    html.Div([
        control("scalar", dcc.Dropdown(id="scalar-name", clearable=False, style={"width": "260px"})),
        control("y axis", dcc.RadioItems(id="scalar-log", options=SCALE_OPTIONS, value="auto", inline=True)),
        control("smoothing", html.Div(dcc.Slider(id="scalar-smoothing", min=0, max=0.99, step=0.01, value=0.6,
                                                 marks={0: "0", 0.25: "0.25", 0.5: "0.5", 0.75: "0.75", 0.99: "0.99"}),
                                      style={"width": "320px"})),
    ], className="tv-controls"),
    graph("scalar-graph", 480),
])


@callback(Output("scalar-name", "options"), Output("scalar-name", "value"),
          Input("refresh", "data"), Input("url", "search"), State("runs", "value"), State("scalar-name", "value"))
def names(_, search, runs, current):
    """Scalars recorded by any selected run (on its first readable rank); `?scalar=..` picks one."""
    current = asked(search, "scalar") or current
    found = []
    for run_id in runs or []:
        try:
            run = catalog().get(run_id)
            for rank in run.ranks[:1]:
                found += [n for n in run.scalar_names(rank) + ["wall_time"] if n not in found]
        except Exception as exc:  # the figure says why
            log.info("scalar names of %r: %s", run_id, exc)
            continue
    opts = options(found)
    return opts, keep_choice(current, opts, "loss")


def _one_run(run, run_id: str, name: str, many_runs: bool, focus=None) -> tuple[list[figures.Series], dict[str, str]]:
    """A run's lines: one per rank (few ranks) or its median rank (many ranks, next to other runs); and the
    lines to draw wider: the ranks that stand out (named e.g. 'rank 3 (most divergent)') and the focused rank."""
    if len(run.ranks) > ranks_view.LINES_UP_TO:
        steps, values = memo_read(run_id, summaries.scalar_across_ranks, name, figures.MAX_POINTS)
        return [figures.Series(f"{run_id} (median rank)", steps, ranks_view.quantile_bands(values)["median"])], {}
    prefix = f"{run_id} " if many_runs else ""
    named = {}
    if name != "wall_time" and len(run.ranks) >= ranks_view.DIVERGE_LEAST:
        named = ranks_view.standouts(run.ranks, summaries.scalar_across_ranks(run, name, figures.MAX_POINTS)[1])
    series = []
    for rank in run.ranks:
        if name == "wall_time" or name in run.scalar_names(rank):
            steps, values = run.scalar(name, rank, max_points=figures.MAX_POINTS)
            label = prefix + ranks_view.standout_label(rank, named.get(rank, []))
            first = run.first_nonfinite(rank).get("scalars", {}).get(name)  # exact: the values may be every k-th
            series.append(figures.Series(label, steps, values, None if many_runs else rank_colour(rank), first))
    wide, rank = dict(named), focused(focus, run)
    if rank is not None:
        wide.setdefault(rank, [])
    return series, {prefix + ranks_view.standout_label(r, why): rank_colour(r) for r, why in wide.items()}


@callback(Output("scalar-graph", "figure"), Input("scalar-name", "value"), Input("scalar-log", "value"),
          Input("scalar-smoothing", "value"), Input("refresh", "data"), Input("focus-rank", "data"),
          State("runs", "value"))
@figures_or_message(1)
def show(name, log, smoothing, _, focus, runs):
    """Lines per rank for runs of a few ranks; for one run of many ranks, quantile bands and the focused rank."""
    if not name:
        return figures.message_figure("no scalar recorded yet")
    runs = runs or []
    if len(runs) == 1:
        run = catalog().get(runs[0])
        if len(run.ranks) > ranks_view.LINES_UP_TO:
            steps, values = memo_read(runs[0], summaries.scalar_across_ranks, name, figures.MAX_POINTS)
            named = {r: ranks_view.standout_label(r, why) for r, why in ranks_view.standouts(run.ranks, values).items()}
            values, unit = figures.in_units(name, values)
            return figures.ranks_figure(steps, run.ranks, values, name, name, named=named,
                                        focus=focused(focus, run), log_y=use_log(log, values), unit=unit)
    series, mark = [], {}
    for run_id in runs:
        lines, marked = _one_run(catalog().get(run_id), run_id, name, len(runs) > 1, focus)
        series += lines
        mark.update(marked)
    series, unit = series_in_units(name, series)
    every_value = np.concatenate([np.asarray(s.values, dtype=np.float64) for s in series]) if series else []
    return figures.line_figure(series, name, name, log_y=use_log(log, every_value), smoothing=float(smoothing or 0),
                               mark=mark, unit=unit)


def series_in_units(name: str, series: list[figures.Series]) -> tuple[list[figures.Series], str]:
    """The lines of scalar `name` as shown and their unit ('' where it has none): a duration in one unit for every
    line (figures.duration_unit of all their values), a clock (wall_time) in seconds from the earliest reading."""
    every = np.concatenate([np.asarray(s.values, dtype=np.float64) for s in series]) if series else np.zeros(0)
    factor, offset, unit = figures.shown_units(name, every)
    if not unit:
        return series, ""
    return [dataclasses.replace(s, values=(np.asarray(s.values, dtype=np.float64) - offset) * factor)
            for s in series], unit
