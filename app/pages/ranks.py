"""Ranks: one statistic across ranks, their spread, step time and throughput per rank, the gradient noise scale."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, callback, dcc, html

from tview.render import figures, summaries
from tview.store import schema

from ..common import catalog, control, figures_or_message, first_run, graph, keep_choice, options

TOTAL = "__total__"

layout = html.Div([
    html.Div([
        control("statistic", dcc.Dropdown(id="ranks-stat", options=options(schema.LAYER_STATS),
                                          value="local_grad_norm", clearable=False, style={"width": "200px"})),
        control("layer", dcc.Dropdown(id="ranks-layer", clearable=False, style={"width": "220px"})),
    ], className="tv-controls"),
    html.Div([graph("ranks-stat-graph", 380), graph("ranks-spread", 380)], className="tv-row"),
    html.Div([graph("ranks-step-time", 340), graph("ranks-throughput", 340)], className="tv-row"),
    graph("ranks-noise-scale", 380),
])


@callback(Output("ranks-layer", "options"), Output("ranks-layer", "value"), Input("runs", "value"),
          State("ranks-layer", "value"))
def layers(runs, current):
    try:
        run = catalog().get(first_run(runs))
    except Exception:
        return [], None
    opts = [{"label": "all layers (total norm)", "value": TOTAL}] + options(run.layers)
    return opts, keep_choice(current, opts, TOTAL)


def per_rank(run, stat: str, layer: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for rank in run.ranks:
        if layer == TOTAL:
            steps, m = run.stat_matrix(stat, rank, max_points=figures.MAX_POINTS)
            values = np.sqrt(summaries.total_norm_sq(m)) if stat.endswith("_norm") else np.nanmean(m, axis=1)
        else:
            steps, values = run.stat(stat, layer, rank, max_points=figures.MAX_POINTS)
        out[rank] = (steps, values)
    return out


def spread(series: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, (max - min) / |mean|) across ranks on the steps they share."""
    steps, values = summaries.aligned(series)
    if len(values) < 2:
        return steps, np.full(len(steps), np.nan)
    v = np.stack(list(values.values()))
    with np.errstate(all="ignore"):
        return steps, (np.nanmax(v, axis=0) - np.nanmin(v, axis=0)) / np.abs(np.nanmean(v, axis=0))


@callback(Output("ranks-stat-graph", "figure"), Output("ranks-spread", "figure"),
          Input("ranks-stat", "value"), Input("ranks-layer", "value"), Input("refresh", "data"), State("runs", "value"))
@figures_or_message(2)
def stat_across_ranks(stat, layer, _, runs):
    run = catalog().get(first_run(runs))
    if layer is None:
        return figures.message_figure("no layer yet"), figures.message_figure("no layer yet")
    series = per_rank(run, stat, layer)
    where = "all layers" if layer == TOTAL else layer
    lines = figures.line_figure([figures.Series(f"rank {r}", s, v) for r, s, v in
                                 ((r, *sv) for r, sv in series.items())], f"{stat} of {where} per rank", stat)
    steps, sp = spread(series)
    return lines, figures.line_figure([figures.Series("spread", steps, sp)],
                                      f"spread between ranks: (max - min) / |mean| of {stat}", "relative spread")


@callback(Output("ranks-step-time", "figure"), Output("ranks-throughput", "figure"),
          Input("refresh", "data"), State("runs", "value"))
@figures_or_message(2)
def timing(_, runs):
    run = catalog().get(first_run(runs))
    labels, medians, lines = [], [], []
    for rank in run.ranks:
        _, t = run.scalar("step_time", rank, max_points=figures.MAX_POINTS)
        labels.append(f"rank {rank}")
        medians.append(float(np.nanmedian(t)) * 1e3 if len(t) else float("nan"))
        steps, eps = run.scalar("examples_per_sec", rank, max_points=figures.MAX_POINTS)
        lines.append(figures.Series(f"rank {rank}", steps, eps))
    finite = [m if np.isfinite(m) else -1 for m in medians]
    slowest = labels[int(np.argmax(finite))] if labels else None
    return (figures.bar_figure(labels, medians, f"median step time per rank (slowest: {slowest})", "ms",
                               highlight=slowest),
            figures.line_figure(lines, "examples per second per rank", "examples/s", mark={slowest: "#d62728"}))


@callback(Output("ranks-noise-scale", "figure"), Input("refresh", "data"), State("runs", "value"))
@figures_or_message(1)
def noise(_, runs):
    run = catalog().get(first_run(runs))
    steps, b_noise = summaries.noise_scale(run, max_points=figures.MAX_POINTS)
    return figures.line_figure([figures.Series("B_simple", steps, b_noise)],
                               "gradient noise scale (McCandlish et al. 2018): the batch size beyond which "
                               "larger batches stop paying", "examples", log_y=True)
