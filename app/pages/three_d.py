"""3D: the network as stacked slabs of channel glyphs, the weight trajectory, and filter-similarity groups."""

from __future__ import annotations

from dash import Input, Output, State, callback, dcc, html

from tview.render import analysis, figures, summaries

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

WHOLE = "__all__"

layout = html.Div([
    html.Div([
        control("colour channels by", dcc.Dropdown(id="net-stat", clearable=False, style={"width": "220px"},
                                                  options=options(["act_channel_mean", "act_channel_zero_frac"]),
                                                  value="act_channel_zero_frac")),
        control("rank", dcc.Dropdown(id="net-rank", clearable=False, style={"width": "120px"})),
        control("step (blank: last)", dcc.Input(id="net-step", type="number", min=0, debounce=True,
                                                style={"width": "100px"})),
        control("trajectory of", dcc.Dropdown(id="traj-layer", clearable=False, style={"width": "220px"})),
    ], className="tv-controls"),
    html.Div([graph("net-3d", 560), graph("traj-3d", 560)], className="tv-row"),
    html.Div([
        control("similar filters of", dcc.Dropdown(id="sim-layer", clearable=False, style={"width": "180px"})),
        control("correlation threshold", html.Div(dcc.Slider(id="sim-threshold", min=0.5, max=0.99, step=0.01,
                                                             value=0.9, marks={0.5: "0.5", 0.8: "0.8", 0.9: "0.9",
                                                                               0.99: "0.99"}),
                                                  style={"width": "320px"})),
    ], className="tv-controls"),
    html.Div([graph("sim-3d", 520), html.Div(id="sim-groups", className="tv-card")], className="tv-row"),
])


@callback(Output("net-rank", "options"), Output("net-rank", "value"), Output("traj-layer", "options"),
          Output("traj-layer", "value"), Output("sim-layer", "options"), Output("sim-layer", "value"),
          Input("runs", "value"), Input("focus-rank", "data"), State("net-rank", "value"), State("traj-layer", "value"),
          State("sim-layer", "value"))
def choices(runs, focus, rank, tlayer, slayer):
    run = open_first(runs)
    if run is None:
        return [], None, [], None, [], None
    r = rank_options(run)
    t = [{"label": "whole network", "value": WHOLE}] + options(run.layers)
    s = options(run.manifest.get("probe_layers", []))
    return r, rank_choice(rank, r, focused(focus, run)), t, keep_choice(tlayer, t, WHOLE), s, keep_choice(slayer, s)


@callback(Output("net-3d", "figure"), Input("net-stat", "value"), Input("net-rank", "value"),
          Input("net-step", "value"), Input("refresh", "data"), State("runs", "value"))
@figures_or_message(1)
def network(stat, rank, step, _, runs):
    run = catalog().get(first_run(runs))
    if rank is None:
        return figures.message_figure("no readable rank yet")
    layers, values, at = summaries.channel_values_at(run, stat, step, int(rank))
    when = f"step {max(at)}" if at else "no step"
    return figures.network_figure(layers, values, f"{stat} per channel at {when} (rank {rank})", stat)


@callback(Output("traj-3d", "figure"), Input("traj-layer", "value"), Input("net-rank", "value"),
          Input("refresh", "data"), State("runs", "value"))
@figures_or_message(1)
def trajectory(layer, rank, _, runs):
    run = catalog().get(first_run(runs))
    if rank is None or layer is None:
        return figures.message_figure("no readable rank yet")
    if layer == WHOLE:
        steps, coords = summaries.summed_trajectory(run, int(rank))
    else:
        steps, coords = run.trajectory(layer, int(rank))
    name = "whole network" if layer == WHOLE else layer
    return figures.trajectory_figure(steps, coords, f"weight trajectory of {name} (rank {rank})")


@callback(Output("sim-3d", "figure"), Output("sim-groups", "children"), Input("sim-layer", "value"),
          Input("sim-threshold", "value"), Input("net-rank", "value"), Input("net-step", "value"),
          Input("refresh", "data"), State("runs", "value"))
def similarity(layer, threshold, rank, step, _, runs):
    try:
        run = catalog().get(first_run(runs))
        if not layer or rank is None:
            return figures.message_figure("no probe batch recorded (pass probe_batch= to the Recorder)"), ""
        at, maps = run.feature_maps(layer, step, int(rank))
        coords, groups = analysis.similarity_layout(maps, float(threshold))
        fig = figures.similarity_figure(coords, groups,
                                        f"{layer} filters by probe activations at step {at} (PCA)")
        text = ([html.H4(f"{len(groups)} group(s) of filters with Pearson r >= {threshold:.2f} (pruning candidates)")] +
                [html.P(f"group {k + 1}: filters {', '.join(map(str, g))}", className="sim-group")
                 for k, g in enumerate(groups)] if groups else
                [html.P(f"no two filters of {layer} correlate at r >= {threshold:.2f}")])
        return fig, text
    except Exception as exc:  # shown on the page; the app goes on
        return figures.message_figure(str(exc)), ""
