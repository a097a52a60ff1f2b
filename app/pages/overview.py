"""Overview: per run its ranks, steps, layers, wall time and what was recorded, a health panel, loss per rank."""

from __future__ import annotations

from dash import Input, Output, State, callback, html

from tview.render import figures, summaries

from ..common import catalog, graph

POINTS = 1000  # per rank in the overview's figure and health checks: a trend, read in milliseconds

layout = html.Div([html.Div(id="overview-body"), graph("overview-loss", 360)])


def _seconds(s):
    return "-" if s is None else (f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min")


def run_card(run_id: str, run, loss: dict) -> html.Div:
    rows = summaries.rank_rows(run)  # read once for the summary and the health checks
    s = summaries.run_summary(run, rows)
    findings = summaries.health_findings(run, POINTS, loss=loss, rows=rows)
    head = [html.H3([run_id, html.Span(" LIVE", className="tv-live") if s["live"] else None])]
    facts = html.P(
        f"{s['model']} · {len(s['readable_ranks'])} of {s['world_size']} rank(s) readable · "
        f"{s['steps']} recorded steps (last step {s['last_step'] if s['last_step'] is not None else '-'}) · "
        f"{s['layers']} layers · wall time {_seconds(s['wall_seconds'])} · preset {s['preset']}, "
        f"schedule {s['schedule']}, snapshots {s['snapshots']} (filters of {len(s['filter_layers'])} layers, "
        f"feature maps of {len(s['probe_layers'])})", className="tv-facts")
    ranks = html.Table(
        [html.Tr([html.Th(h) for h in ("rank", "state", "steps", "last step", "wall time", "dropped", "problem")])] +
        [html.Tr([html.Td(r["rank"]), html.Td(r["state"], className=f"state-{r['state'].replace(' ', '-')}"),
                  html.Td(r["steps"]), html.Td("-" if r["last_step"] is None else r["last_step"]),
                  html.Td(_seconds(r["wall_seconds"])), html.Td(r["dropped"]), html.Td(r["problem"] or "")])
         for r in s["ranks"]], className="tv-table")
    if s["steps"] == 0:
        health = [html.Li("no steps recorded yet", className="tv-warning")]
    elif findings:
        health = [html.Li(f.message, className=f"tv-{f.severity} finding-{f.kind}") for f in findings]
    else:
        health = [html.Li("no NaN/Inf, no exploding or vanishing gradients, no dead filters, ranks agree",
                          className="tv-ok")]
    return html.Div(head + [facts, ranks, html.H4("health"), html.Ul(health, className="tv-health")],
                    className="tv-card run-card")


@callback(Output("overview-body", "children"), Output("overview-loss", "figure"),
          Input("refresh", "data"), State("runs", "value"))
def show(_, runs):
    cat = catalog()
    cards, series = [], []
    if not runs:
        return html.P("pick a run above"), figures.message_figure("no run picked")
    for run_id in runs:
        try:
            run = cat.get(run_id)
            loss = summaries.scalar_per_rank(run, "loss", POINTS)  # read once: for the figure and the health checks
            cards.append(run_card(run_id, run, loss))
            for rank, (steps, values) in loss.items():
                if len(steps):
                    series.append(figures.Series(f"{run_id} rank {rank}" if len(runs) > 1 else f"rank {rank}",
                                                 steps, values))
        except Exception as exc:  # a run that cannot be read says so; the others are still shown
            cards.append(html.Div([html.H3(run_id), html.P(str(exc), className="tv-error")], className="tv-card run-card"))
    fig = figures.line_figure(series, "loss per rank", "loss") if series else figures.message_figure("no loss recorded yet")
    return cards, fig
