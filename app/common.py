"""Helpers the pages share: the app's run catalog, safe figure callbacks, option lists for controls."""

from __future__ import annotations

import functools
import logging

import flask
from dash import Output, dcc, html

from tview.errors import TviewError
from tview.render.figures import message_figure

from .catalog import RunCatalog
from .live_diagnosis import LiveDiagnoses

ALL_RANKS = "all"
SCALE_OPTIONS = [{"label": " auto (log when values span decades)", "value": "auto"},  # a y axis or colour scale
                 {"label": " linear", "value": "linear"}, {"label": " log", "value": "log"}]
# On a callback that reads a run on each refresh: the poll timer stops while it runs, so a slow read on a big
# run never has the next refresh queued behind it.
HOLD_POLL = [(Output("poll", "disabled"), True, False)]
log = logging.getLogger("tview_app")


def catalog() -> RunCatalog:
    return flask.current_app.config["TVIEW_CATALOG"]


def live_diagnoses() -> LiveDiagnoses:
    """The last findings of the live runs, made in child processes (app.live_diagnosis)."""
    return flask.current_app.config["TVIEW_LIVE_DIAGNOSES"]


def memo_read(run_id: str, fn, *args):
    """fn(run, *args) for the run `run_id`, read once per change of the run (RunCatalog.memo); args hashable."""
    cat = catalog()
    return cat.memo(run_id, (fn.__module__, fn.__qualname__, args), lambda: fn(cat.get(run_id), *args))


SUMMARIES = ("rank_summaries",)  # the memo key of a run's rank summaries (the poll keeps what it read there)


def run_summaries(run_id: str) -> dict[int, dict]:
    """The run's rank summaries (tview.render.summaries.compact of run.rank_summaries(): no shard opened), read
    once per change of the run: the poll reads them and keeps them for the pages."""
    from tview.render.summaries import compact
    cat = catalog()
    return cat.memo(run_id, SUMMARIES, lambda: compact(cat.get(run_id).rank_summaries()))


def memo_summarized(run_id: str, fn, *args):
    """fn(run, run_summaries(run_id), *args), read once per change of the run; args hashable."""
    cat = catalog()
    return cat.memo(run_id, (fn.__module__, fn.__qualname__, args),
                    lambda: fn(cat.get(run_id), run_summaries(run_id), *args))


def figures_or_message(count: int):
    """Wrap a callback returning `count` figures: a tview error, missing data or a bad value becomes a
    figure that says so (and the app goes on serving), never a broken page."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (TviewError, KeyError, ValueError, IndexError, OSError) as exc:
                msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                log.info("%s: %s", fn.__name__, msg or type(exc).__name__)
                fig = message_figure(msg or type(exc).__name__)
                return fig if count == 1 else tuple(fig for _ in range(count))
            except Exception:  # a bug: say so on the page, keep serving, log the trace
                log.exception("%s failed", fn.__name__)
                fig = message_figure("internal error (see the server log)")
                return fig if count == 1 else tuple(fig for _ in range(count))
        return inner
    return wrap


def options(values, labels=None) -> list[dict]:
    labels = labels or [str(v) for v in values]
    return [{"label": label, "value": v} for v, label in zip(values, labels)]


def first_run(runs) -> str | None:
    """The first selected run id (pages about one run use it)."""
    if isinstance(runs, str):
        return runs
    return runs[0] if runs else None


def rank_options(run, with_all: str | None = None) -> list[dict]:
    opts = options(run.ranks, [f"rank {r}" for r in run.ranks])
    return ([{"label": with_all, "value": ALL_RANKS}] if with_all else []) + opts


def control(label: str, component) -> html.Div:
    return html.Div([html.Label(label, className="tv-label"), component], className="tv-control")


def graph(id_: str, height: int = 420) -> dcc.Graph:
    return dcc.Graph(id=id_, style={"height": f"{height}px"}, config={"displaylogo": False})


FOCUS_BUTTON = "focus-rank-button"


def rank_button(rank: int) -> html.Button:
    """A rank's number as a button: a click focuses every page on it (app.focus_from_button fills in the focus box)."""
    return html.Button(str(rank), id={"type": FOCUS_BUTTON, "rank": rank}, className="tv-rank-button",
                       title="focus every page on this rank")


def focused(focus, run) -> int | None:
    """The focused rank (the focus-rank store's value) if this run has it, else None."""
    from tview.render.ranks_view import parse_rank
    return parse_rank(focus, run.ranks)


def rank_choice(current, opts: list[dict], focus=None, default=None):
    """A rank control's value: the focused rank when it is among the options, else keep_choice."""
    if focus is not None and focus in [o["value"] for o in opts]:
        return focus
    return keep_choice(current, opts, default)


def open_first(runs):
    """The first selected run, or None (logged) when it cannot be opened: controls then stay empty."""
    try:
        return catalog().get(first_run(runs))
    except Exception as exc:  # the page's figures say why; here only the menus stay empty
        log.info("cannot open run %r: %s", first_run(runs), exc)
        return None


def asked(search: str | None, key: str) -> str | None:
    """`?key=value` in the address (links from findings pick a statistic, a layer, a scalar this way)."""
    from urllib.parse import parse_qs
    values = parse_qs((search or "").lstrip("?")).get(key)
    return values[0] if values else None


def keep_choice(current, opts: list[dict], default=None):
    """Keep the user's choice when it is still among the options, else fall back."""
    values = [o["value"] for o in opts]
    if current in values:
        return current
    if default in values:
        return default
    return values[0] if values else None
