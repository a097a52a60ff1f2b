"""3D: the network as stacked slabs of channel glyphs, the weight trajectory, and filter-similarity groups."""

from __future__ import annotations

import math

from dash import Input, Output, State, callback, dcc, html

from tview.render import analysis, figures, figures3d, summaries

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
STAT_OPTIONS = [{"label": "zero fraction", "value": "act_channel_zero_frac"},
                {"label": "mean activation", "value": "act_channel_mean"}]

layout = html.Div([
    html.Div([
        control("colour channels by", dcc.Dropdown(id="net-stat", clearable=False, style={"width": "220px"},
                                                  options=STAT_OPTIONS, value="act_channel_zero_frac")),
        control("rank", dcc.Dropdown(id="net-rank", clearable=False, style={"width": "120px"})),
        control("step (blank: last)", dcc.Input(id="net-step", type="number", min=0, debounce=True,
                                                style={"width": "100px"})),
        control("trajectory of", dcc.Dropdown(id="traj-layer", clearable=False, style={"width": "220px"})),
    ], className="tv-controls"),
    html.Div([graph("net-3d", 560), graph("traj-3d", 560)], className="tv-row"),
    html.Div([
        control("similar filters of", dcc.Dropdown(id="sim-layer", clearable=False, style={"width": "180px"})),
        control("correlation threshold", html.Div(dcc.Slider(id="sim-threshold", min=0.5, max=0.99, step=0.01,
                                                             value=0.9, marks={0.5: "0.5", 0.6: "0.6", 0.7: "0.7",
                                                                               0.8: "0.8", 0.9: "0.9"}),
                                                  style={"width": "320px"})),
    ], className="tv-controls"),
    html.Div([graph("sim-3d", 520), html.Div(id="sim-groups", className="tv-card tv-side-card")], className="tv-row"),
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
    layers, values, at, bad = summaries.channel_values_shown(run, stat, step, int(rank))
    when = f"step {max(at)}" if at else "no step"
    label = {o["value"]: o["label"] for o in STAT_OPTIONS}.get(stat, stat)
    title = f"{label} per channel at {when} (rank {rank}), input at the bottom"
    if bad:
        title += f"<br><span style='color:#d62728'>NaN/Inf in the output of {', '.join(bad[:4])}" \
                 f"{' ...' if len(bad) > 4 else ''}: grey</span>"
    return figures3d.network_figure(layers, values, title, label, bounds=(0.0, 1.0) if stat.endswith("_frac") else None)


@callback(Output("traj-3d", "figure"), Input("traj-layer", "value"), Input("net-rank", "value"),
          Input("refresh", "data"), State("runs", "value"))
@figures_or_message(1)
def trajectory(layer, rank, _, runs):
    run = catalog().get(first_run(runs))
    if rank is None or layer is None:
        return figures.message_figure("no readable rank yet")
    why = None if layer == WHOLE else summaries.no_values_reason(run, "trajectory", layer)
    if why is not None:
        return figures.message_figure(why)
    if layer == WHOLE:
        steps, coords = summaries.summed_trajectory(run, int(rank))
    else:
        steps, coords = run.trajectory(layer, int(rank))
    name = "whole network" if layer == WHOLE else layer
    return figures3d.trajectory_figure(steps, coords, f"weight trajectory of {name} (rank {rank}), projected on "
                                                      "3 random directions")


@callback(Output("sim-3d", "figure"), Output("sim-groups", "children"), Input("sim-layer", "value"),
          Input("sim-threshold", "value"), Input("net-rank", "value"), Input("net-step", "value"),
          Input("refresh", "data"), State("runs", "value"))
def similarity(layer, threshold, rank, step, _, runs):
    try:
        run = catalog().get(first_run(runs))
        if not layer or rank is None:
            return figures.message_figure("no probe batch recorded (pass probe_batch= to the Recorder)"), ""
        at, maps = run.feature_maps(layer, step, int(rank))
        blank = summaries.nonfinite_snapshot_text(maps, f"the probe activations of {layer}", at,
                                                  summaries.first_nonfinite_tensor(run, "activation", layer, int(rank)))
        if blank:  # no filter can be placed or grouped: not 'no two filters correlate'
            return figures.message_figure(blank), html.P(blank, className="tv-note")
        coords, groups = analysis.similarity_layout(maps, float(threshold))
        fig = figures3d.similarity_figure(coords, groups, f"filters of {layer} placed by their activations on the "
                                                          f"probe batch at step {at} (PCA; numbers: filter index)")
        return fig, similarity_text(layer, float(threshold), groups, analysis.closest_pairs(maps))
    except Exception as exc:  # shown on the page; the app goes on
        return figures.message_figure(str(exc)), ""


def _below(r: float, threshold: float) -> str:
    """r to 2 decimals, truncated below the threshold (0.8996 under 0.90 is not 'r = 0.90')."""
    return f"{math.floor(r * 100) / 100:.2f}" if r < threshold else f"{r:.2f}"


def similarity_text(layer: str, threshold: float, groups: list[list[int]], pairs: list[tuple[int, int, float]]):
    """What the similarity view shows, its groups (pruning candidates) or, when there are none, how close the
    nearest pairs came."""
    explain = html.P(f"Each point is one filter of {layer}, placed by a PCA of its activations on the probe batch. "
                     "Filters whose activations correlate (Pearson r at or above the threshold, merged transitively) "
                     "form a group: they respond alike, so all but one are pruning candidates.", className="tv-explain")
    if groups:
        found = [html.H4(f"{len(groups)} group(s) at r >= {threshold:.2f}")]
        found += [html.P(f"group {k + 1}: filters {', '.join(map(str, g))}", className="sim-group")
                  for k, g in enumerate(groups)]
    else:
        found = [html.H4(f"no two filters of {layer} correlate at r >= {threshold:.2f}")]
    alike = "; ".join(f"filters {i} and {j} (r = {_below(r, threshold)})" for i, j, r in pairs)
    closest = [html.P("most alike: " + alike, className="tv-note")] if pairs else []
    return found + closest + [explain]
