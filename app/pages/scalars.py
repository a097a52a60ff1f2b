"""Scalars: loss, learning rate, step time, memory, ... over steps, one line per rank, several runs overlaid."""

from __future__ import annotations

from dash import Input, Output, State, callback, dcc, html

from tview.render import figures, ranks_view, summaries

from ..common import catalog, control, figures_or_message, focused, graph, keep_choice, options

layout = html.Div([
    html.Div([
        control("scalar", dcc.Dropdown(id="scalar-name", clearable=False, style={"width": "260px"})),
        control("y axis", dcc.Checklist(id="scalar-log", options=[{"label": " log", "value": "log"}], value=[])),
        control("smoothing", html.Div(dcc.Slider(id="scalar-smoothing", min=0, max=0.99, step=0.01, value=0.6,
                                                 marks={0: "0", 0.5: "0.5", 0.9: "0.9", 0.99: "0.99"}),
                                      style={"width": "320px"})),
    ], className="tv-controls"),
    graph("scalar-graph", 480),
])


@callback(Output("scalar-name", "options"), Output("scalar-name", "value"),
          Input("refresh", "data"), State("runs", "value"), State("scalar-name", "value"))
def names(_, runs, current):
    found = []
    for run_id in runs or []:
        try:
            run = catalog().get(run_id)
            for rank in run.ranks:
                found += [n for n in run.scalar_names(rank) + ["wall_time"] if n not in found]
        except Exception:
            continue
    opts = options(found)
    return opts, keep_choice(current, opts, "loss")


def _one_run(run, run_id: str, name: str, many_runs: bool) -> list[figures.Series]:
    """A run's lines: one per rank (few ranks) or its median rank (many ranks, next to other runs)."""
    series = []
    if len(run.ranks) > ranks_view.LINES_UP_TO:
        steps, values = summaries.scalar_across_ranks(run, name, figures.MAX_POINTS)
        return [figures.Series(f"{run_id} (median rank)", steps, ranks_view.quantile_bands(values)["median"])]
    for rank in run.ranks:
        if name == "wall_time" or name in run.scalar_names(rank):
            steps, values = run.scalar(name, rank, max_points=figures.MAX_POINTS)
            series.append(figures.Series(f"{run_id} rank {rank}" if many_runs else f"rank {rank}", steps, values))
    return series


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
            steps, values = summaries.scalar_across_ranks(run, name, figures.MAX_POINTS)
            return figures.ranks_figure(steps, run.ranks, values, name, name, focus=focused(focus, run),
                                        log_y="log" in (log or []))
    series = [s for run_id in runs for s in _one_run(catalog().get(run_id), run_id, name, len(runs) > 1)]
    return figures.line_figure(series, name, name, log_y="log" in (log or []), smoothing=float(smoothing or 0))
