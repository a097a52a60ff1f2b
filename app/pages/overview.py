"""Overview: per run its ranks, steps, layers, wall time and what was recorded, the ranks worth a look, its health
(tview.diagnose's findings, the one source: a panel of its own), and the loss across ranks (bands beyond a few
ranks) with the ranks that stand out named."""

from __future__ import annotations

from collections import Counter

import numpy as np
from dash import ALL, Input, Output, State, callback, html, no_update

from tview.render import figures, ranks_view, summaries
from tview.render.style import use_log

from ..common import HOLD_POLL, catalog, graph, live_diagnoses, log, memo_summarized, rank_button, run_summaries
from ..findings import diagnosis_panel, live_diagnosis_panel

WORST_SHOWN = 5   # ranks listed on the card (the Ranks page pages through all of them)

DIAGNOSIS_SLOT = "run-diagnosis"  # inside each run's card: its diagnosis, filled in by a callback of its own

# one card per run (its facts, ranks and diagnosis), the loss after them
layout = html.Div([html.Div(id="overview-body"), graph("overview-loss", 380)])


def diagnosis_slot(run_id: str) -> html.Div:
    return html.Div(html.P("diagnosing ...", className="tv-note"), id={"type": DIAGNOSIS_SLOT, "run": run_id},
                    className="diagnosis-card")


def _seconds(s):
    return "-" if s is None else (f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min")


def _worst_table(rows: list[dict], focus: int | None) -> html.Table:
    head = ("rank", "state", "steps", "last step", "wall time", "median step time", "tview's share", "first NaN",
            "dropped", "problem")
    body = [html.Tr([html.Td(rank_button(r["rank"])),
                     html.Td(r["state"], className=f"state-{r['state'].replace(' ', '-')}"),
                     html.Td(r["steps"]), html.Td("-" if r["last_step"] is None else r["last_step"]),
                     html.Td(_seconds(r["wall_seconds"])),
                     html.Td(figures.duration_text(r["step_time"])),
                     html.Td(summaries.share_text(r.get("tview_share")),
                             title="tview's time on the training thread (tview_time, summed) over the later half of "
                                   "the recorded wall time"),
                     html.Td("-" if r["first_nan"] is None else r["first_nan"]), html.Td(r["dropped"]),
                     html.Td(r["problem"] or "")], className="tv-focused" if r["rank"] == focus else None)
            for r in rows]
    return html.Table([html.Tr([html.Th(h) for h in head])] + body, className="tv-table")


def _shown_rows(table: list[dict], focus: int | None) -> list[dict]:
    """The worst WORST_SHOWN ranks (all of them for a small run), and the focused rank if it is not among them."""
    shown = table[:WORST_SHOWN] if len(table) > ranks_view.LINES_UP_TO else table
    extra = [r for r in table if r["rank"] == focus and r not in shown]
    return shown + extra


def card_data(run, rank_summaries: dict[int, dict] | None = None) -> dict:
    """Everything the card and the loss figure show of a run, from its rank summaries alone (run.rank_summaries():
    small files beside the shards, no shard opened): states, the ranks table (median step time from the step
    time trend, first NaN exact), the loss trend across ranks and the ranks that stand out."""
    rank_summaries = rank_summaries if rank_summaries is not None else summaries.compact(run.rank_summaries())
    rows = summaries.rank_rows(run, rank_summaries)
    table = summaries.summary_table(rows, rank_summaries)
    loss = summaries.trend_across_ranks(rank_summaries, "loss", run.ranks)
    named = summaries.summary_standouts(run.ranks, table, rank_summaries, loss[1])
    return {"summary": summaries.run_summary(run, rows), "states": Counter(r["state"] for r in rows), "table": table,
            "named": named, "loss": loss, "ranks": list(run.ranks),
            "loss_nan": summaries.first_scalar_nonfinite(rank_summaries, "loss")}


def run_card(run_id: str, data: dict, focus: int | None) -> html.Div:
    """The card of one run from card_data."""
    s, table, states = data["summary"], data["table"], data["states"]
    head = [html.H3([run_id, html.Span(" LIVE", className="tv-live") if s["live"] else None])]
    facts = html.P(
        f"{s['model']} · {len(s['readable_ranks'])} of {s['world_size']} rank(s) readable "
        f"({', '.join(f'{n} {state}' for state, n in sorted(states.items()))}) · "
        f"{s['steps']} recorded steps (last step {s['last_step'] if s['last_step'] is not None else '-'}) · "
        f"{s['layers']} layers · wall time {_seconds(s['wall_seconds'])} · preset {s['preset']}, "
        f"schedule {s['schedule']}, snapshots {s['snapshots']} (filters of {len(s['filter_layers'])} layers, "
        f"feature maps of {len(s['probe_layers'])})", className="tv-facts")
    title = "ranks" if len(table) <= ranks_view.LINES_UP_TO else f"the {WORST_SHOWN} ranks worth a look first"
    body = head + [facts, html.H4(title), _worst_table(_shown_rows(table, focus), focus), diagnosis_slot(run_id)]
    return html.Div(body, className="tv-card run-card")


def _loss_figure(runs: list[str], losses: dict, named: dict, focus_rank: dict):
    """One run: the loss on every rank (bands beyond a few ranks); several: each run's median rank."""
    if len(losses) == 1:
        (run_id, (ranks, steps, values)), = losses.items()
        labels = {r: ranks_view.standout_label(r, why) for r, why in named.get(run_id, {}).items()}
        how = "per rank" if len(ranks) <= ranks_view.LINES_UP_TO else "across ranks"
        return figures.ranks_figure(steps, ranks, values, f"loss {how}", "loss", named=labels,
                                    focus=focus_rank.get(run_id), log_y=use_log("auto", values))
    series = [figures.Series(f"{run_id} (median rank)", steps, ranks_view.quantile_bands(values)["median"])
              for run_id, (ranks, steps, values) in losses.items()]
    every = np.concatenate([s.values for s in series])
    return figures.line_figure(series, "loss (median rank of each run)", "loss", log_y=use_log("auto", every))


@callback(Output("overview-body", "children"), Output("overview-loss", "figure"),
          Input("refresh", "data"), Input("focus-rank", "data"), State("runs", "value"), running=HOLD_POLL)
def show(refresh, focus, runs):
    """The cards and the loss figure, from the rank summaries the poll read (the page's first figure waits for
    the first poll, which reads them once for every page, rather than reading them beside it)."""
    cards, losses, named, focus_rank, loss_nan = [], {}, {}, {}, {}
    if not runs:
        return html.P("pick a run above"), figures.message_figure("no run picked")
    if refresh is None:
        return no_update, no_update
    for run_id in runs:
        try:
            data = memo_summarized(run_id, card_data)
            focus_rank[run_id] = ranks_view.parse_rank(focus, data["ranks"])
            cards.append(run_card(run_id, data, focus_rank[run_id]))
            named[run_id], loss = data["named"], data["loss"]
            loss_nan[run_id] = data["loss_nan"]
            if loss[1].size and np.isfinite(loss[1]).any():
                losses[run_id] = (data["ranks"], *loss)
        except Exception as exc:  # a run that cannot be read says so; the others are still shown
            log.warning("overview of %r: %s", run_id, exc)
            cards.append(html.Div([html.H3(run_id), html.P(str(exc), className="tv-error"), diagnosis_slot(run_id)],
                                  className="tv-card run-card"))
    fig = _loss_figure(runs, losses, named, focus_rank) if losses else figures.message_figure("no loss recorded yet")
    first = [(s, r, run_id) for run_id, found in loss_nan.items() if found and run_id in losses for s, r in [found]]
    if first:  # the trend is every k-th record and leaves NaN out: where the loss went NaN, exactly
        step, rank, run_id = min(first)
        where = f"rank {rank}" if len(losses) == 1 else f"{run_id}, rank {rank}"
        figures.mark_step(fig, step, f"loss NaN/Inf from step {step} ({where})")
    return cards, fig


def _diagnosis(run, rank_summaries: dict, run_id: str):
    """A live run's findings from a child process (the server's memory stays flat while it grows); any other run's
    read here, once (its signature no longer changes). Both read every step, as `tview diagnose` does."""
    live = live_diagnoses()
    if summaries.is_live(summaries.rank_rows(run, rank_summaries)):
        return live_diagnosis_panel(run_id, run.path, live, rank_summaries)
    live.forget(run.path)
    return diagnosis_panel(run_id, run, None, rank_summaries)


def diagnosis_of(run_id: str):
    """The run's diagnosis panel, or while one is under way the last one (None before the first)."""
    cat = catalog()
    return cat.memo_or_last(run_id, ("diagnosis",), lambda: _diagnosis(cat.get(run_id), run_summaries(run_id), run_id))


@callback(Output({"type": DIAGNOSIS_SLOT, "run": ALL}, "children"), Input({"type": DIAGNOSIS_SLOT, "run": ALL}, "id"),
          Input("refresh", "data"))
def diagnosis(slots, refresh):
    """tview.diagnose's findings of each run, in its card, each linking to its evidence: a callback of its own, so
    the cards and the loss figure never wait for it (read once per change of the run, after the first poll).
    While a run's diagnosis is under way, a refresh shows its last one (the poll goes on: a 1024-rank live run is
    diagnosed again as soon as the last diagnosis ends, not at each poll)."""
    if refresh is None or not slots:
        return [no_update] * len(slots)
    panels = []
    for slot in slots:
        run_id = slot["run"]
        try:
            panel = diagnosis_of(run_id)
            panels.append(no_update if panel is None else panel)  # None: the first diagnosis answers its own request
        except Exception as exc:  # a run that cannot be read says so; the others are still shown
            log.warning("diagnosis of %r: %s", run_id, exc)
            panels.append(html.P(f"diagnosis: {exc}", className="tv-error"))
    return panels
