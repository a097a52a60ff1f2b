"""Helpers the pages share: the app's run catalog, safe figure callbacks, option lists for controls."""

from __future__ import annotations

import functools
import traceback

import flask
from dash import dcc, html

from tview.errors import TviewError
from tview.render.figures import message_figure

from .catalog import RunCatalog

ALL_RANKS = "all"


def catalog() -> RunCatalog:
    return flask.current_app.config["TVIEW_CATALOG"]


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
                fig = message_figure(msg or type(exc).__name__)
                return fig if count == 1 else tuple(fig for _ in range(count))
            except Exception:  # a bug: say so on the page, keep serving, log the trace
                traceback.print_exc()
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


def keep_choice(current, opts: list[dict], default=None):
    """Keep the user's choice when it is still among the options, else fall back."""
    values = [o["value"] for o in opts]
    if current in values:
        return current
    if default in values:
        return default
    return values[0] if values else None
