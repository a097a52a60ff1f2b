"""Layers: a layer x step heatmap of a statistic, and histograms over time for one layer, one rank or all."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, callback, dcc, html

from tview.render import figures, summaries
from tview.render.style import use_log

from ..common import (
    ALL_RANKS,
    SCALE_OPTIONS,
    asked,
    catalog,
    control,
    figures_or_message,
    first_run,
    focused,
    graph,
    keep_choice,
    open_first,
    options,
    rank_choice,
    rank_options,
)

layout = html.Div([
    html.Div([
        control("statistic", dcc.Dropdown(id="layers-stat", clearable=False, style={"width": "200px"})),
        control("rank", dcc.Dropdown(id="layers-rank", clearable=False, style={"width": "160px"})),
        control("colour", dcc.RadioItems(id="layers-log", options=SCALE_OPTIONS, value="auto", inline=True)),
    ], className="tv-controls"),
    graph("layers-heatmap", 420),
    html.Div([
        control("histogram of", dcc.Dropdown(id="hist-kind", clearable=False, style={"width": "140px"})),
        control("layer", dcc.Dropdown(id="hist-layer", clearable=False, style={"width": "200px"})),
    ], className="tv-controls"),
    graph("layers-histogram", 480),
])


@callback(Output("layers-stat", "options"), Output("layers-stat", "value"), Output("hist-kind", "options"),
          Output("hist-kind", "value"), Input("runs", "value"), Input("url", "search"), State("layers-stat", "value"),
          State("hist-kind", "value"))
def menus(runs, search, stat, kind):
    """Statistics and histogram kinds as this run recorded them: a new statistic shows up with no edit here;
    `?stat=..` picks one."""
    stat = asked(search, "stat") or stat
    run = open_first(runs)
    if run is None:
        return [], None, [], None
    stats, kinds = options(run.stat_names()), options(run.hist_kinds())
    return stats, keep_choice(stat, stats, "grad_norm"), kinds, keep_choice(kind, kinds, "grad")


@callback(Output("layers-rank", "options"), Output("layers-rank", "value"), Output("hist-layer", "options"),
          Output("hist-layer", "value"), Input("runs", "value"), Input("focus-rank", "data"), Input("url", "search"),
          State("layers-rank", "value"), State("hist-layer", "value"))
def choices(runs, focus, search, rank, layer):
    layer = asked(search, "layer") or layer
    run = open_first(runs)
    if run is None:
        return [], None, [], None
    ranks = rank_options(run, with_all="all ranks (mean; histograms: sum)")
    layers = options(run.layers)
    return (ranks, rank_choice(rank, ranks, focused(focus, run), run.ranks[0] if run.ranks else None),
            layers, keep_choice(layer, layers))


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
    if rank is None or stat is None:
        return figures.message_figure("this run has no readable rank yet")
    steps, values = _over_ranks(run, rank, lambda r: run.stat_matrix(stat, r, max_points=figures.MAX_HEATMAP_ROWS))
    if rank == ALL_RANKS:
        with np.errstate(all="ignore"):
            values = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=0) if len(values) else values
    who = "mean over ranks" if rank == ALL_RANKS else f"rank {rank}"
    fig = figures.heatmap_figure(steps, run.layers, values, f"{stat} per layer ({run_id}, {who})", stat,
                                 log=use_log(log, values))
    return _marked(fig, run, stat, rank)


def _marked(fig, run, name: str, rank, layer: str | None = None, steps_down: bool = False):
    """The figure with its statistic's first NaN/Inf step marked (of `layer`, or the first layer to hold one)."""
    first = summaries.first_nonfinite_of(run, name, run.ranks if rank == ALL_RANKS else [int(rank)], layer)
    if first is None or not fig.data:
        return fig
    step, where = first
    return figures.mark_step(fig, step, f"NaN/Inf from step {step}" + ("" if layer else f" ({where} first)"),
                             steps_down=steps_down)


@callback(Output("layers-histogram", "figure"), Input("hist-kind", "value"), Input("hist-layer", "value"),
          Input("layers-rank", "value"), Input("refresh", "data"), State("runs", "value"))
@figures_or_message(1)
def histogram(kind, layer, rank, _, runs):
    run = catalog().get(first_run(runs))
    if layer is None or rank is None or kind is None:
        return figures.message_figure("no layer or rank to show yet")
    why = summaries.no_values_reason(run, kind, layer)
    if why is not None:
        return figures.message_figure(why)
    edges = []  # the bin edges the reader returns (the same for every rank)

    def read(r):
        steps, bin_edges, counts = run.histogram(kind, layer, r, max_points=figures.MAX_HEATMAP_ROWS)
        edges[:] = bin_edges
        return steps, counts
    steps, counts = _over_ranks(run, rank, read)
    if rank == ALL_RANKS:
        counts = counts.sum(axis=0)
    who = "all ranks" if rank == ALL_RANKS else f"rank {rank}"
    fig = figures.histogram_figure(steps, edges, counts, f"{kind} histogram of {layer} over steps ({who})")
    return _marked(fig, run, kind, rank, layer, steps_down=True)
