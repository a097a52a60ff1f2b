"""Layers: a layer x step heatmap of a statistic, and histograms over time for one layer, one rank or all."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, callback, dcc, html

from tview.render import figures, summaries
from tview.store import schema

from ..common import ALL_RANKS, catalog, control, figures_or_message, first_run, graph, keep_choice, options, rank_options

layout = html.Div([
    html.Div([
        control("statistic", dcc.Dropdown(id="layers-stat", options=options(schema.LAYER_STATS), value="grad_norm",
                                          clearable=False, style={"width": "200px"})),
        control("rank", dcc.Dropdown(id="layers-rank", clearable=False, style={"width": "160px"})),
        control("colour", dcc.Checklist(id="layers-log", options=[{"label": " log", "value": "log"}], value=["log"])),
    ], className="tv-controls"),
    graph("layers-heatmap", 420),
    html.Div([
        control("histogram of", dcc.Dropdown(id="hist-kind", options=options(schema.HIST_KINDS), value="grad",
                                             clearable=False, style={"width": "140px"})),
        control("layer", dcc.Dropdown(id="hist-layer", clearable=False, style={"width": "200px"})),
    ], className="tv-controls"),
    graph("layers-histogram", 480),
])


@callback(Output("layers-rank", "options"), Output("layers-rank", "value"), Output("hist-layer", "options"),
          Output("hist-layer", "value"), Input("runs", "value"), State("layers-rank", "value"),
          State("hist-layer", "value"))
def choices(runs, rank, layer):
    try:
        run = catalog().get(first_run(runs))
    except Exception:
        return [], None, [], None
    ranks = rank_options(run, with_all="all ranks (mean; histograms: sum)")
    layers = options(run.layers)
    return ranks, keep_choice(rank, ranks, run.ranks[0] if run.ranks else None), layers, keep_choice(layer, layers)


def _over_ranks(run, rank, read):
    """read(rank) -> (steps, values) for one rank, or every rank's values stacked on their common steps."""
    if rank != ALL_RANKS:
        return read(int(rank))
    steps, values = summaries.aligned({r: read(r) for r in run.ranks})
    return steps, np.stack(list(values.values()))


@callback(Output("layers-heatmap", "figure"), Input("layers-stat", "value"), Input("layers-rank", "value"),
          Input("layers-log", "value"), Input("refresh", "data"), State("runs", "value"))
@figures_or_message(1)
def heatmap(stat, rank, log, _, runs):
    run_id = first_run(runs)
    run = catalog().get(run_id)
    if rank is None:
        return figures.message_figure("this run has no readable rank yet")
    steps, values = _over_ranks(run, rank, lambda r: run.stat_matrix(stat, r, max_points=figures.MAX_HEATMAP_ROWS))
    if rank == ALL_RANKS:
        with np.errstate(all="ignore"):
            values = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=0) if len(values) else values
    who = "mean over ranks" if rank == ALL_RANKS else f"rank {rank}"
    return figures.heatmap_figure(steps, run.layers, values, f"{stat} per layer ({run_id}, {who})", stat,
                                  log="log" in (log or []))


@callback(Output("layers-histogram", "figure"), Input("hist-kind", "value"), Input("hist-layer", "value"),
          Input("layers-rank", "value"), Input("refresh", "data"), State("runs", "value"))
@figures_or_message(1)
def histogram(kind, layer, rank, _, runs):
    run = catalog().get(first_run(runs))
    if layer is None or rank is None:
        return figures.message_figure("no layer or rank to show yet")
    edges = schema.hist_edges()

    def read(r):
        steps, _, counts = run.histogram(kind, layer, r, max_points=figures.MAX_HEATMAP_ROWS)
        return steps, counts
    steps, counts = _over_ranks(run, rank, read)
    if rank == ALL_RANKS:
        counts = counts.sum(axis=0)
    who = "all ranks" if rank == ALL_RANKS else f"rank {rank}"
    return figures.histogram_figure(steps, edges, counts, f"{kind} histogram of {layer} over steps ({who})")
