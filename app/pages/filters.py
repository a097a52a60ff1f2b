"""Filters: the conv filter grid of a layer at a chosen snapshot (slider, play), and the probe batch's feature maps."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, callback, ctx, dcc, html

from tview.render import figures

from ..common import (
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


def snapshot_marks(steps) -> dict:
    n = len(steps)
    picks = sorted(set(np.linspace(0, n - 1, min(n, 6)).astype(int))) if n else []
    return {int(i): str(int(steps[i])) for i in picks}


layout = html.Div([
    html.Div([
        control("filters of", dcc.Dropdown(id="filters-layer", clearable=False, style={"width": "180px"})),
        control("feature maps of", dcc.Dropdown(id="maps-layer", clearable=False, style={"width": "180px"})),
        control("probe example", dcc.Input(id="maps-example", type="number", min=0, value=0, style={"width": "80px"})),
        control("rank", dcc.Dropdown(id="filters-rank", clearable=False, style={"width": "120px"})),
        html.Button("play", id="filters-play", n_clicks=0),
    ], className="tv-controls"),
    html.Div([html.Label("snapshot step", className="tv-label"),
              dcc.Slider(id="filters-step", min=0, max=0, step=1, value=0)], style={"maxWidth": "900px"}),
    dcc.Interval(id="filters-tick", interval=700, disabled=True),
    html.Div([graph("filters-grid", 560), graph("filters-maps", 560)], className="tv-row"),
])


@callback(Output("filters-layer", "options"), Output("filters-layer", "value"), Output("maps-layer", "options"),
          Output("maps-layer", "value"), Output("filters-rank", "options"), Output("filters-rank", "value"),
          Input("runs", "value"), Input("focus-rank", "data"), State("filters-layer", "value"),
          State("maps-layer", "value"),
          State("filters-rank", "value"))
def choices(runs, focus, flayer, mlayer, rank):
    run = open_first(runs)
    if run is None:
        return [], None, [], None, [], None
    f = options(run.manifest.get("filter_layers", []))
    m = options(run.manifest.get("probe_layers", []))
    r = rank_options(run)
    return f, keep_choice(flayer, f), m, keep_choice(mlayer, m), r, rank_choice(rank, r, focused(focus, run))


@callback(Output("filters-step", "max"), Output("filters-step", "marks"), Output("filters-step", "value"),
          Input("filters-rank", "value"), Input("refresh", "data"), Input("filters-tick", "n_intervals"),
          State("runs", "value"), State("filters-step", "value"), State("filters-step", "max"))
def steps(rank, _, tick, runs, value, old_max):
    try:
        steps = catalog().get(first_run(runs)).snapshot_steps(int(rank)) if rank is not None else []
    except Exception:
        steps = []
    last = max(len(steps) - 1, 0)
    if ctx.triggered_id == "filters-tick":
        value = 0 if (value or 0) >= last else (value or 0) + 1
    elif value is None or value >= (old_max or 0):
        value = last  # at the end (or new): follow the newest snapshot
    return last, snapshot_marks(steps), min(value, last)


@callback(Output("filters-tick", "disabled"), Output("filters-play", "children"), Input("filters-play", "n_clicks"))
def play(n):
    playing = bool(n) and n % 2 == 1
    return not playing, "pause" if playing else "play"


@callback(Output("filters-grid", "figure"), Output("filters-maps", "figure"), Input("filters-layer", "value"),
          Input("maps-layer", "value"), Input("maps-example", "value"), Input("filters-rank", "value"),
          Input("filters-step", "value"), State("runs", "value"))
@figures_or_message(2)
def show(flayer, mlayer, example, rank, index, runs):
    run = catalog().get(first_run(runs))
    if rank is None:
        return figures.message_figure("no readable rank yet"), figures.message_figure("no readable rank yet")
    rank = int(rank)
    snaps = run.snapshot_steps(rank)
    if len(snaps) == 0:
        msg = figures.message_figure("no snapshot recorded yet")
        return msg, msg
    step = int(snaps[min(int(index or 0), len(snaps) - 1)])
    if flayer:
        at, w = run.filters(flayer, step, rank)
        grid = figures.filter_grid_figure(w, f"{flayer} filters {list(w.shape)} at step {at} (rank {rank})")
    else:
        grid = figures.message_figure("no conv filters recorded")
    if mlayer:
        at, maps = run.feature_maps(mlayer, step, rank)
        i = int(example or 0)
        if not 0 <= i < len(maps):
            raise ValueError(f"probe example {i} out of range: the probe batch has {len(maps)} examples")
        fmaps = figures.feature_map_figure(maps[i], f"{mlayer} feature maps of probe example {i} at step {at}")
    else:
        fmaps = figures.message_figure("no probe batch recorded (pass probe_batch= to the Recorder)")
    return grid, fmaps
