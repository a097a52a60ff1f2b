"""Ranks: one statistic across ranks as quantile bands with the ranks that stand out, a rank x step heatmap,
step time per rank, the ranks table worst first and paged, the gradient noise scale (tview.diagnose's) per layer."""

from __future__ import annotations

import time

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

from tview.diagnose import noise_scale
from tview.render import figures, ranks_view, summaries
from tview.render.style import use_log
from tview.store.rank_summary import WHOLE_NETWORK

from ..common import (
    HOLD_POLL,
    SCALE_OPTIONS,
    asked,
    catalog,
    control,
    figures_or_message,
    first_run,
    focused,
    graph,
    keep_choice,
    log,
    memo_read,
    memo_summarized,
    open_first,
    options,
    rank_button,
    run_summaries,
)

WHOLE = "__total__"
SCALAR = "scalar:"  # prefix of a scalar (loss, step_time, ...) in the statistic menu: it has no layer
POINTS = 1000  # per rank: bands over 1000 steps, heatmap columns fewer (figures.HEATMAP_CELLS)

layout = html.Div([
    html.Div([
        control("statistic", dcc.Dropdown(id="ranks-stat", clearable=False, style={"width": "200px"})),
        control("layer", dcc.Dropdown(id="ranks-layer", clearable=False, style={"width": "220px"})),
        html.Span(id="ranks-layer-hint", className="tv-note tv-hint"),  # why the layer menu is off
        control("heatmap colour", dcc.RadioItems(id="ranks-log", options=SCALE_OPTIONS, value="auto", inline=True)),
    ], className="tv-controls"),
    html.Div([graph("ranks-stat-graph", 400), graph("ranks-heatmap", 400)], className="tv-row"),
    html.Div([
        html.Div([html.H4("ranks, worst first"),
                  html.Div([html.Button("previous", id="ranks-prev", className="tv-button"),
                            html.Span(id="ranks-page-label", className="tv-note"),
                            html.Button("next", id="ranks-next", className="tv-button")], className="tv-pager"),
                  html.Div(id="ranks-table")], className="tv-card"),
        graph("ranks-step-time", 380),
    ], className="tv-row"),
    html.Div([
        control("noise scale of", dcc.Dropdown(id="ranks-noise-layer", clearable=False, style={"width": "220px"})),
        html.Span(id="ranks-noise-note", className="tv-note"),
    ], className="tv-controls"),
    graph("ranks-noise-scale", 380),
    dcc.Store(id="ranks-summary"),  # {"rows": ranks table worst first, "standouts": {rank: [reasons]}}
    dcc.Store(id="ranks-full"),  # the choice whose every-shard read follows the figures drawn from the summaries
    dcc.Store(id="ranks-full-done"),  # changes when that read was drawn: the noise scale is read after it
    dcc.Store(id="ranks-page", data=0),
])


@callback(Output("ranks-stat", "options"), Output("ranks-stat", "value"), Output("ranks-layer", "options"),
          Output("ranks-layer", "value"), Input("runs", "value"), Input("url", "search"), State("ranks-stat", "value"),
          State("ranks-layer", "value"))
def choices(runs, search, stat, layer):
    """The statistic menu from the run (per-layer statistics, then scalars); `?stat=..&layer=..` picks."""
    stat, layer = asked(search, "stat") or stat, asked(search, "layer") or layer
    run = open_first(runs)
    if run is None:
        return [], None, [], None
    scalars = sorted({n for r in run.ranks[:1] for n in run.scalar_names(r)})
    stats = options(run.stat_names()) + [{"label": f"{n} (scalar)", "value": SCALAR + n} for n in scalars]
    layers = [{"label": "whole network", "value": WHOLE}] + options(run.layers)
    return (stats, keep_choice(stat, stats, "local_grad_norm" if len(run.ranks) > 1 else "grad_norm"),
            layers, keep_choice(layer, layers, WHOLE))


def layer_control(stat: str | None) -> tuple[bool, str]:
    """(disabled, hint) of the layer menu for a statistic menu choice: a scalar (loss, step_time, ...) is one number
    per rank and step, of no layer, so the menu is off and says why."""
    if stat is not None and stat.startswith(SCALAR):
        return True, f"{stat[len(SCALAR):]} is a scalar: one value per rank and step, of no layer"
    return False, ""


@callback(Output("ranks-layer", "disabled"), Output("ranks-layer-hint", "children"), Input("ranks-stat", "value"))
def layer_menu(stat):
    return layer_control(stat)


def summary(run, rank_summaries: dict) -> dict:
    """The ranks table (worst first) and who stands out by step time and first NaN, as plain data, from the rank
    summaries (no shard opened)."""
    rows = summaries.summary_table(summaries.rank_rows(run, rank_summaries), rank_summaries)
    named = summaries.summary_standouts(run.ranks, rows, rank_summaries)
    return {"rows": rows, "standouts": {str(r): why for r, why in named.items()}}


@callback(Output("ranks-summary", "data"), Input("refresh", "data"), Input("runs", "value"), running=HOLD_POLL)
def read_summary(refresh, runs):
    if refresh is None:  # the first poll reads the summaries for every page
        return no_update
    try:
        return memo_summarized(first_run(runs), summary)
    except Exception as exc:  # the table says so
        log.warning("ranks summary of %r: %s", first_run(runs), exc)
        return {"rows": [], "standouts": {}, "error": str(exc)}


def named_lines(standing: dict, divergent: dict[int, list[str]]) -> dict[int, str]:
    """rank -> legend label, from the summary's standouts (slowest, first NaN) and this statistic's divergence."""
    merged = {int(r): list(why) for r, why in (standing or {}).items()}
    for r, why in divergent.items():
        merged.setdefault(r, []).extend(w for w in why if w not in merged[r])
    return {r: ranks_view.standout_label(r, why) for r, why in merged.items()}


def read_across_ranks(run, stat: str, layer: str):
    """(steps, values [ranks, steps], name, where) of a menu choice: a per-layer statistic (where: its layer or
    the whole network) or a scalar (where: None)."""
    if stat.startswith(SCALAR):
        name = stat[len(SCALAR):]
        return (*summaries.scalar_across_ranks(run, name, POINTS), name, None)
    steps, values = summaries.stat_across_ranks(run, stat, None if layer == WHOLE else layer, POINTS)
    return steps, values, stat, "whole network" if layer == WHOLE else layer


def trend_name(stat: str, layer: str, kept: list[str]) -> str | None:
    """The trend series of the rank summaries (kept: the names they keep) that holds a menu choice (a scalar, or
    the whole network's norm of a per-layer norm), or None: the choice needs every shard."""
    name = stat[len(SCALAR):] if stat.startswith(SCALAR) else stat
    if not stat.startswith(SCALAR) and (layer != WHOLE or WHOLE_NETWORK.get(stat) != "norm"):
        return None
    return name if name in kept else None


def trend_values(run, rank_summaries: dict, name: str):
    """(steps, values [ranks, steps]) of a trend series across the run's ranks (summaries.trend_across_ranks)."""
    return summaries.trend_across_ranks(rank_summaries, name, run.ranks)


def stat_figures(run_id: str, steps, values, stat: str, where, focus, log_colour, source: str, heatmap: bool = True):
    """The bands (with the standouts named) and the rank x step heatmap (None unless `heatmap`) of one choice;
    layout.meta.source says where the values came from ('summaries': every k-th step of the trends; 'shards':
    read from every shard)."""
    run = catalog().get(run_id)
    divergent = {r: why for r, why in ranks_view.standouts(run.ranks, values).items()}
    named = named_lines(memo_summarized(run_id, summary)["standouts"], divergent)
    rank = focused(focus, run)
    how = "per rank" if len(run.ranks) <= ranks_view.LINES_UP_TO else "across ranks"
    what = stat if where is None else f"{stat} of {where}"
    values, unit = figures.in_units(stat, values) if where is None else (values, "")  # a scalar may be a duration
    bands = figures.ranks_figure(steps, run.ranks, values, f"{what} {how}", stat, named=named, focus=rank,
                                 log_y=use_log("auto", values), unit=unit)
    bands.update_layout(meta={"source": source})
    if not heatmap:
        return bands, None
    heat = figures.rank_heatmap_figure(steps, run.ranks, values, f"{what}: rank x step (click a rank)",
                                       stat, log=use_log(log_colour, values), focus=rank, unit=unit)
    heat.update_layout(meta={"source": source})
    return bands, heat


@callback(Output("ranks-stat-graph", "figure"), Output("ranks-heatmap", "figure"), Output("ranks-full", "data"),
          Input("ranks-stat", "value"), Input("ranks-layer", "value"), Input("ranks-log", "value"),
          Input("refresh", "data"), Input("focus-rank", "data"), State("runs", "value"),
          State("ranks-full-done", "data"), running=HOLD_POLL)
@figures_or_message(3)
def stat_across_ranks(stat, layer, log_colour, refresh, focus, runs, shown):
    """The bands first from the rank summaries when they hold the choice (the page's first figure in a fraction
    of a second at 1024 ranks), then (stat_from_shards, after this) bands and heatmap from every shard. Once this
    choice was drawn from every shard (shown), a refresh or a focus goes straight to that read: no coarser figure
    in between."""
    if refresh is None:  # the first poll reads the summaries for every page
        return no_update, no_update, no_update
    if stat is None or layer is None:
        return figures.message_figure("no statistic yet"), figures.message_figure("no statistic yet"), no_update
    run_id = first_run(runs)
    why = None if stat.startswith(SCALAR) or layer == WHOLE else \
        summaries.no_values_reason(catalog().get(run_id), stat, layer)
    if why is not None:
        return figures.message_figure(why), figures.message_figure(why), no_update
    follow = {"run": run_id, "stat": stat, "layer": layer, "at": time.time()}
    if isinstance(shown, dict) and [shown.get(k) for k in ("run", "stat", "layer")] == [run_id, stat, layer]:
        return no_update, no_update, follow
    name = trend_name(stat, layer, summaries.trend_names(run_summaries(run_id)))
    if name is None:
        wait = figures.message_figure(f"reading {stat} of {layer} on every rank ...")
        return wait, wait, follow
    steps, values = memo_summarized(run_id, trend_values, name)
    where = None if stat.startswith(SCALAR) else "whole network"
    bands, _ = stat_figures(run_id, steps, values, name, where, focus, log_colour, "summaries", heatmap=False)
    return bands, figures.message_figure(f"reading {name} on every rank ..."), follow


@callback(Output("ranks-stat-graph", "figure", allow_duplicate=True),
          Output("ranks-heatmap", "figure", allow_duplicate=True), Output("ranks-full-done", "data"),
          Input("ranks-full", "data"), State("ranks-log", "value"), State("focus-rank", "data"),
          State("runs", "value"), running=HOLD_POLL, prevent_initial_call=True)
@figures_or_message(3)
def stat_from_shards(follow, log_colour, focus, runs):
    """The choice read from every shard (every recorded step, any layer), after the summaries' figures."""
    if not isinstance(follow, dict) or "stat" not in follow:
        return no_update, no_update, no_update
    run_id = first_run(runs)
    steps, values, stat, where = memo_read(run_id, read_across_ranks, follow["stat"], follow["layer"])
    return (*stat_figures(run_id, steps, values, stat, where, focus, log_colour, "shards"), follow)


@callback(Output("ranks-step-time", "figure"), Input("ranks-full", "data"), Input("focus-rank", "data"),
          State("runs", "value"))
@figures_or_message(1)
def step_time(follow, focus, runs):
    """Step time per rank from the rank summaries' trends, the slowest rank named (after the statistic's first
    figure, which it would otherwise share the server and the browser with)."""
    if follow is None:
        return no_update
    run_id = first_run(runs)
    run = catalog().get(run_id)
    name = step_time_name(summaries.trend_names(run_summaries(run_id)))
    steps, values = memo_summarized(run_id, trend_values, name)
    standing = {int(r): [w for w in why if w.startswith("slowest")]
                for r, why in memo_summarized(run_id, summary)["standouts"].items()}
    named = {r: ranks_view.standout_label(r, why) for r, why in standing.items() if why}
    shown, unit = figures.in_units(name, values)
    return figures.ranks_figure(steps, run.ranks, shown, STEP_TIME_TITLES[name], name, named=named,
                                focus=focused(focus, run), log_y=use_log("auto", values), unit=unit)


STEP_TIME_TITLES = {
    "busy_time": "busy time per rank: its own forward and backward, without the wait for the other ranks",
    "step_time": "step time per rank (under DDP every rank waits for the slowest: equal on every rank)"}


def step_time_name(kept: list[str]) -> str:
    """busy_time where the run recorded it (a rank's own work: under DDP the straggler shows only there), else
    step_time."""
    return "busy_time" if "busy_time" in kept else "step_time"


def noise_views(run) -> dict:
    """tview.diagnose.noise_scale as plain data for the chart, per choice (WHOLE, then each layer with parameters):
    {choice: {"steps", "values", "spans", "batch", "critical"}}, or {"reason": why} where it is undefined."""
    ns = noise_scale(run, figures.MAX_POINTS)
    if ns.reason:
        return {"reason": ns.reason, "batch": ns.batch}
    return {name: {"steps": n.steps, "values": n.b_simple, "spans": n.undefined_spans(), "batch": n.batch,
                   "critical": n.critical_batch}
            for name, n in [(WHOLE, ns), *ns.layers.items()]}


def noise_note(view: dict) -> str:
    """The critical batch size next to the batch size in use, in one line."""
    batch, critical = view.get("batch"), view.get("critical")
    used = "-" if batch is None else f"{batch:.0f}"
    if critical is None:
        return f"critical batch size: undefined (batch size in use {used})"
    ratio = f" ({critical / batch:.2g}x)" if batch else ""
    return f"critical batch size ~ {critical:.0f}{ratio} next to the batch size in use {used} (per rank x ranks)"


@callback(Output("ranks-noise-scale", "figure"), Output("ranks-noise-layer", "options"),
          Output("ranks-noise-layer", "value"), Output("ranks-noise-note", "children"),
          Input("ranks-full-done", "data"), Input("ranks-noise-layer", "value"), State("runs", "value"),
          running=HOLD_POLL)
def noise(drawn, choice, runs):
    """The gradient noise scale of the whole network or one layer, its undefined stretches shaded with their
    reason, the critical batch size it implies next to the batch size in use (read after the statistic across
    ranks was drawn from every shard: the figures above come first)."""
    if drawn is None:
        return no_update, no_update, no_update, no_update
    try:
        views = memo_read(first_run(runs), noise_views)
    except Exception as exc:  # the figure says so
        log.warning("noise scale of %r: %s", first_run(runs), exc)
        return figures.message_figure(str(exc)), [], None, ""
    if "reason" in views:
        return figures.message_figure(f"gradient noise scale undefined: {views['reason']}"), [], None, ""
    opts = [{"label": "whole network" if k == WHOLE else k, "value": k} for k in views]
    choice = keep_choice(choice, opts, WHOLE)
    view = views[choice]
    where = "whole network" if choice == WHOLE else choice
    fig = figures.noise_scale_figure(view["steps"], view["values"], view["spans"],
                                     f"gradient noise scale B_simple of {where} (McCandlish et al. 2018): the batch "
                                     "size beyond which larger batches stop paying", view["batch"], view["critical"])
    return fig, opts, choice, noise_note(view)


def table(rows: list[dict], focus: int | None, standing: dict) -> html.Table:
    """One page of the ranks table; a rank's button focuses every page on it."""
    furthest = max((r["last_step"] for r in rows if r["last_step"] is not None), default=None)
    head = ("rank", "state", "steps", "last step", "behind", "median step time", "tview's share", "first NaN",
            "dropped", "why", "problem")
    body = []
    for r in rows:
        behind = "-" if r["last_step"] is None or furthest is None else furthest - r["last_step"]
        body.append(html.Tr([
            html.Td(rank_button(r["rank"])),
            html.Td(r["state"], className=f"state-{r['state'].replace(' ', '-')}"), html.Td(r["steps"]),
            html.Td("-" if r["last_step"] is None else r["last_step"]), html.Td(behind),
            html.Td(figures.duration_text(r["step_time"])),
            html.Td(summaries.share_text(r.get("tview_share"))),
            html.Td("-" if r["first_nan"] is None else r["first_nan"]), html.Td(r["dropped"]),
            html.Td(", ".join(standing.get(str(r["rank"]), []))), html.Td(r["problem"] or "")],
            className="tv-focused" if r["rank"] == focus else None))
    return html.Table([html.Tr([html.Th(h) for h in head])] + body, className="tv-table ranks-table")


@callback(Output("ranks-page", "data"), Input("ranks-prev", "n_clicks"), Input("ranks-next", "n_clicks"),
          Input("focus-rank", "data"), Input("ranks-summary", "data"), State("ranks-page", "data"))
def turn_page(_prev, _next, focus, summary_data, page):
    rows = (summary_data or {}).get("rows", [])
    page = int(page or 0)
    trigger = dash.ctx.triggered_id
    if trigger == "ranks-prev":
        page -= 1
    elif trigger == "ranks-next":
        page += 1
    elif trigger == "focus-rank":
        at = ranks_view.page_with_rank(rows, ranks_view.parse_rank(focus))
        page = page if at is None else at
    return min(max(page, 0), ranks_view.page_count(len(rows)) - 1)


@callback(Output("ranks-table", "children"), Output("ranks-page-label", "children"), Input("ranks-summary", "data"),
          Input("ranks-page", "data"), Input("focus-rank", "data"))
def show_table(summary_data, page, focus):
    summary_data = summary_data or {}
    if summary_data.get("error"):
        return html.P(summary_data["error"], className="tv-error"), ""
    rows, page = ranks_view.page_of(summary_data.get("rows", []), page)
    n = len(summary_data.get("rows", []))
    label = f" page {page + 1} of {ranks_view.page_count(n)} ({n} ranks) "
    return table(rows, ranks_view.parse_rank(focus), summary_data.get("standouts", {})), label


@callback(Output("focus-input", "value", allow_duplicate=True), Input("ranks-heatmap", "clickData"),
          prevent_initial_call=True)
def pick_rank(click):
    """A click on a heatmap row focuses that rank."""
    points = (click or {}).get("points") or []
    return ranks_view.parse_rank(points[0].get("y")) if points else no_update
