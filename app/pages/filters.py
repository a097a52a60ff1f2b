"""Filters: a conv layer's filters at a chosen snapshot step (slider in steps, play), and the probe example's
feature maps beside the probe input they come from."""

from __future__ import annotations

from dash import Input, Output, State, callback, ctx, dcc, html

from tview.render import figures, image_grids, summaries
from tview.render.snapshots import next_snapshot, snapshot_marks

from ..common import (
    catalog,
    control,
    figures_or_message,
    first_run,
    focused,
    keep_choice,
    open_first,
    options,
    rank_choice,
    rank_options,
)


def fitted_graph(id_: str) -> dcc.Graph:
    """A graph as tall as its figure says (image grids size themselves to their grid: no empty band)."""
    return dcc.Graph(id=id_, config={"displaylogo": False}, style={"height": "auto"})


layout = html.Div([
    html.Div([
        control("filters of", dcc.Dropdown(id="filters-layer", clearable=False, style={"width": "180px"})),
        control("feature maps of", dcc.Dropdown(id="maps-layer", clearable=False, style={"width": "180px"})),
        control("probe example", dcc.Input(id="maps-example", type="number", min=0, value=0, style={"width": "80px"})),
        control("rank", dcc.Dropdown(id="filters-rank", clearable=False, style={"width": "120px"})),
    ], className="tv-controls"),
    html.Div([
        html.Button("play", id="filters-play", n_clicks=0, className="tv-button tv-play"),
        html.Div([html.Label("snapshot at step", id="filters-step-label", className="tv-label"),
                  dcc.Slider(id="filters-step", min=0, max=0, step=None, value=0, marks={0: "0"})],
                 className="tv-slider"),
    ], className="tv-player"),
    dcc.Interval(id="filters-tick", interval=700, disabled=True),
    fitted_graph("filters-grid"),
    html.Div([html.Div(fitted_graph("filters-input"), className="tv-probe-input"),
              html.Div(fitted_graph("filters-maps"), className="tv-maps")], className="tv-row tv-maps-row"),
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


def _snapshot_steps(runs, rank) -> list[int]:
    try:
        return [int(s) for s in catalog().get(first_run(runs)).snapshot_steps(int(rank))] if rank is not None else []
    except Exception:
        return []


@callback(Output("filters-step", "min"), Output("filters-step", "max"), Output("filters-step", "marks"),
          Output("filters-step", "value"),
          Input("filters-rank", "value"), Input("refresh", "data"), Input("filters-tick", "n_intervals"),
          State("runs", "value"), State("filters-step", "value"), State("filters-step", "max"))
def steps(rank, _, tick, runs, value, old_last):
    """The slider's values are the snapshot steps themselves (only they can be picked); play moves to the next."""
    steps = _snapshot_steps(runs, rank)
    if not steps:
        return 0, 0, {0: "0"}, 0
    if ctx.triggered_id == "filters-tick":
        value = next_snapshot(steps, value)
    elif value is None or value not in steps or value >= (old_last or 0):
        value = steps[-1]  # at the end (or new): follow the newest snapshot
    return steps[0], steps[-1], snapshot_marks(steps), value


@callback(Output("filters-step-label", "children"), Input("filters-step", "value"), Input("filters-step", "max"),
          State("filters-rank", "value"), State("runs", "value"))
def step_label(value, _, rank, runs):
    """Which snapshot the slider is at, however it got there (moved by hand, by play, or following the newest)."""
    return snapshot_label(_snapshot_steps(runs, rank), value)


def snapshot_label(steps: list[int], value) -> str:
    if not steps:
        return "no snapshot yet"
    where = f" ({steps.index(value) + 1} of {len(steps)})" if value in steps else ""
    return f"snapshot at step {value}{where}"


@callback(Output("filters-tick", "disabled"), Output("filters-play", "children"), Input("filters-play", "n_clicks"))
def play(n):
    playing = bool(n) and n % 2 == 1
    return not playing, "pause" if playing else "play"


@callback(Output("filters-grid", "figure"), Output("filters-input", "figure"), Output("filters-maps", "figure"),
          Input("filters-layer", "value"), Input("maps-layer", "value"), Input("maps-example", "value"),
          Input("filters-rank", "value"), Input("filters-step", "value"), State("runs", "value"))
@figures_or_message(3)
def show(flayer, mlayer, example, rank, step, runs):
    run = catalog().get(first_run(runs))
    if rank is None:
        msg = figures.message_figure("no readable rank yet")
        return msg, msg, msg
    rank = int(rank)
    if len(run.snapshot_steps(rank)) == 0:
        msg = figures.message_figure("no snapshot recorded yet")
        return msg, msg, msg
    step = int(step or 0)
    grid = _filter_grid(run, flayer, step, rank) if flayer else figures.message_figure("no conv filters recorded")
    if not mlayer:
        msg = figures.message_figure("no probe batch recorded (pass probe_batch= to the Recorder)")
        return grid, figures.message_figure(""), msg  # said once, in the wide panel (the narrow one cut it)
    at, maps = run.feature_maps(mlayer, step, rank)
    i = int(example or 0)
    if not 0 <= i < len(maps):
        raise ValueError(f"probe example {i} out of range: the probe batch has {len(maps)} examples")
    inputs = run.probe_inputs(rank)
    probe = (image_grids.probe_input_figure(inputs[i], f"probe example {i} (input)") if inputs is not None
             else figures.message_figure("probe inputs not stored"))
    blank = summaries.nonfinite_snapshot_text(maps[i], f"the feature maps of {mlayer}", at,
                                              summaries.first_nonfinite_tensor(run, "activation", mlayer, rank))
    fmaps = figures.message_figure(blank) if blank else image_grids.feature_map_figure(
        maps[i], f"feature maps of {mlayer} for probe example {i} at step {at} (rank {rank})")
    return grid, probe, fmaps


def _filter_grid(run, layer: str, step: int, rank: int):
    """A conv layer's filters at the snapshot at or before `step`; where they are all NaN/Inf, a message that says so
    (a grid of blank cells reads as nothing recorded)."""
    at, w = run.filters(layer, step, rank)
    blank = summaries.nonfinite_snapshot_text(w, f"the weights of {layer}", at,
                                              summaries.first_nonfinite_tensor(run, "weight", layer, rank))
    if blank:
        return figures.message_figure(blank)
    return image_grids.filter_grid_figure(w, f"filters of {layer} at step {at} (rank {rank}): weights of each "
                                             f"{w.shape[2]} x {w.shape[3]} kernel")
