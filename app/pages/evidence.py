"""Evidence: the statistic that shows one finding, with the finding marked (where a finding's "show" link lands)."""

from __future__ import annotations

from dash import Input, Output, callback, dcc, html

from tview.diagnose.findings import Finding

from ..common import asked, catalog, figures_or_message, graph
from ..findings import evidence_figure, page_link

layout = html.Div([html.P(id="evidence-note", className="tv-note"), graph("evidence-graph", 520)])


def finding_of(search: str | None) -> Finding:
    """The finding a `?kind=..&layer=..&rank=..&stat=..&step=..&channels=..` address names."""
    def number(key):
        value = asked(search, key)
        return int(value) if value not in (None, "") else None
    channels = asked(search, "channels")
    return Finding(asked(search, "kind") or "", "", rank=number("rank"), layer=asked(search, "layer"),
                   step=number("step"), stat=asked(search, "stat"),
                   channels=[int(c) for c in channels.split(",")] if channels else [])


@callback(Output("evidence-graph", "figure"), Input("url", "search"))
@figures_or_message(1)
def evidence(search):
    f = finding_of(search)
    return evidence_figure(catalog().get(asked(search, "runs")), f.kind, f.layer, f.stat, f.rank, f.step, f.channels)


@callback(Output("evidence-note", "children"), Input("url", "search"))
def note(search):
    return ["the finding is marked in red; ", dcc.Link("open its statistic on its page",
                                                       href=page_link(asked(search, "runs") or "", finding_of(search)))]
