"""The tview Dash app: a run picker, a live indicator and six pages (overview, scalars, layers, ranks, filters, 3D)."""

from __future__ import annotations

import importlib
import logging
import os
import time

import dash
from dash import ALL, Input, Output, State, callback, dcc, html, no_update

from tview.render import figures
from tview.render.ranks_view import parse_rank, rank_from_query

from . import guard
from .catalog import RunCatalog
from .live_diagnosis import LiveDiagnoses

POLL_MS = 2000  # how often the app looks for new steps, ranks and runs (at least)
POLL_DUTY = 0.25  # a poll that took t seconds waits t / POLL_DUTY before the next: the server stays free
log = logging.getLogger(__name__)

PAGES = [  # module, path, name
    ("overview", "/", "Overview"),
    ("scalars", "/scalars", "Scalars"),
    ("layers", "/layers", "Layers"),
    ("ranks", "/ranks", "Ranks"),
    ("filters", "/filters", "Filters"),
    ("three_d", "/3d", "3D"),
]


def create_app(root: str) -> dash.Dash:
    """The app for the runs at or below `root` (a run folder or a folder of runs). Assets are served
    by the app itself (no CDN), so it works with no network."""
    catalog = RunCatalog(root)
    app = dash.Dash(__name__, use_pages=True, pages_folder="", serve_locally=True, title="tview",
                    assets_folder=os.path.join(os.path.dirname(__file__), "assets"),
                    suppress_callback_exceptions=True)
    app.server.config["TVIEW_CATALOG"] = catalog
    app.server.config["TVIEW_LIVE_DIAGNOSES"] = LiveDiagnoses()
    guard.install(app.server)
    for order, (module, path, name) in enumerate(PAGES):
        mod = importlib.import_module(f"{__name__}.pages.{module}")
        dash.register_page(f"{__name__}.pages.{module}", path=path, name=name, order=order, layout=mod.layout,
                           title=f"tview · {name}")
    evidence = importlib.import_module(f"{__name__}.pages.evidence")  # where findings' "show" links land (no tab)
    dash.register_page(evidence.__name__, path="/evidence", name="Evidence", layout=evidence.layout,
                       title="tview · Evidence")
    app.layout = lambda: shell(catalog)  # built on each page load: runs that appeared since are listed
    figures.warm_up()  # plotly's validators loaded now, not in the first request
    return app


def shell(catalog: RunCatalog) -> html.Div:
    """What every page shares: navigation, the run picker, the live badge, the poll timer."""
    ids = catalog.scan()
    return html.Div([
        html.Header([
            html.Span("tview", className="tv-brand"),
            html.Nav([dcc.Link(name, href=path, className="tv-nav", id=f"nav-{module}")
                      for module, path, name in PAGES]),
            html.Span(id="live-badge", className="tv-badge"),
        ], className="tv-header"),
        html.Div([
            html.Label("runs", className="tv-label"),
            dcc.Dropdown(id="runs", options=[{"label": i, "value": i} for i in ids], value=[], multi=True,
                         persistence=True, persistence_type="session", placeholder="pick one or more runs"),
            html.Span(f"{len(ids)} run(s) under {catalog.root}", id="runs-found", className="tv-note"),
            html.Label("focus rank", className="tv-label tv-focus-label"),
            dcc.Input(id="focus-input", type="number", min=0, step=1, debounce=True, placeholder="any",
                      className="tv-focus-input"),
        ], className="tv-runbar"),
        dcc.Location(id="url"),
        dcc.Interval(id="poll", interval=POLL_MS),
        dcc.Store(id="refresh"),  # changes only when a selected run gained steps, ranks or a problem
        dcc.Store(id="focus-rank", storage_type="session"),  # the rank every page focuses on (None: none)
        html.Main(dash.page_container, className="tv-main"),
    ])


def runs_from_query(search: str | None, known: list[str]) -> list[str] | None:
    """`?runs=a,b` in the address picks runs (a link can be shared); ids not found under root are ignored."""
    from urllib.parse import parse_qs
    asked = parse_qs((search or "").lstrip("?")).get("runs")
    if not asked:
        return None
    wanted = [r for part in asked for r in part.split(",") if r]
    return [r for r in wanted if r in known]


@callback(Output("runs", "value"), Input("url", "search"), State("runs", "value"))
def pick_from_address(search, current):
    """Runs from the address, else the runs picked before (kept by the browser), else the first run."""
    from .common import catalog
    ids = catalog().scan()
    picked = runs_from_query(search, ids)
    if picked is not None:
        return picked
    return no_update if current else ids[:1]


@callback(Output("focus-rank", "data"), Output("focus-input", "value"),
          Input("url", "search"), Input("focus-input", "value"), State("focus-rank", "data"))
def focus(search, typed, stored):
    """One focused rank for every page: from `?rank=N` in the address or the box in the run bar (which a click
    on a rank anywhere fills in); kept in the focus-rank store for the session."""
    if dash.ctx.triggered_id == "focus-input":
        rank = parse_rank(typed)
    else:  # the address changed, or the page loaded
        asked = rank_from_query(search)
        rank = asked if asked is not None else parse_rank(stored)
    return rank, rank


@callback(Output("focus-input", "value", allow_duplicate=True),
          Input({"type": "focus-rank-button", "rank": ALL}, "n_clicks"), prevent_initial_call=True)
def focus_from_button(_clicks):
    """A rank's button in a table (common.rank_button) focuses that rank."""
    trigger = dash.ctx.triggered_id
    if not isinstance(trigger, dict) or not any(t["value"] for t in dash.ctx.triggered):
        return no_update  # buttons drawn anew, not clicked
    return trigger["rank"]


def poll_interval_ms(seconds: float) -> int:
    """The wait before the next poll after one that took `seconds`: POLL_MS, or longer when polls are slow."""
    return int(max(POLL_MS, 1000 * seconds / POLL_DUTY))


def run_signature(rows: list[dict]) -> list:
    """What changes when a run grows, from summaries.rank_rows: per rank its steps, state and problem."""
    return [[r["rank"], r["steps"], r["state"], bool(r["problem"])] for r in rows]


@callback(Output("runs", "options"), Output("runs-found", "children"), Output("refresh", "data"),
          Output("live-badge", "children"), Output("live-badge", "className"), Output("poll", "interval"),
          Input("poll", "n_intervals"), Input("runs", "value"), State("refresh", "data"),
          running=[(Output("poll", "disabled"), True, False)])  # no poll starts while one runs
def poll(_, runs, previous):
    from .common import catalog
    started = time.perf_counter()
    cat = catalog()
    ids = cat.scan()
    signature, live = {}, []
    for run_id in runs or []:
        try:
            signature[run_id], is_live = look_at(cat, run_id)
            if is_live:
                live.append(run_id)
        except Exception as exc:  # shown by the pages themselves
            log.warning("poll: run %s: %s", run_id, exc)
            signature[run_id] = str(exc)
    badge = (f"LIVE: {', '.join(live)}", "tv-badge tv-live") if live else ("", "tv-badge")
    return ([{"label": i, "value": i} for i in ids], f"{len(ids)} run(s) under {cat.root}",
            signature if signature != previous else no_update, *badge,
            poll_interval_ms(time.perf_counter() - started))


def look_at(cat: RunCatalog, run_id: str) -> tuple[list, bool]:
    """(run_signature, live?) of a run from its rank summaries, which are kept for the pages (common.SUMMARIES):
    one read of the small per-rank files per poll, shared by every page."""
    from tview.render.summaries import compact, is_live, rank_rows

    from .common import SUMMARIES
    run = cat.get(run_id)
    rank_summaries = compact(run.rank_summaries())
    rows = rank_rows(run, rank_summaries)
    signature = run_signature(rows)
    cat.note_signature(run_id, signature)
    cat.keep(run_id, SUMMARIES, rank_summaries)
    return signature, is_live(rows)
