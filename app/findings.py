"""The overview's diagnosis panel: tview.diagnose findings, the cause first with what followed from it, each linking
to the page and selection that shows its evidence (the layer heatmap at that layer, the rank focused, the step and
channels in the address; the ranks page for rank faults; the scalars page for the lr and the loss)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

import numpy as np
from dash import dcc, html

from tview.diagnose import CLEAN_MESSAGE, diagnose
from tview.diagnose.findings import Finding

from .common import log
from .live_diagnosis import LiveDiagnoses, LiveFindings

# a per-channel statistic's per-layer counterpart: the layer heatmap shows layers x steps
LAYER_STAT = {"act_channel_zero_frac": "act_zero_frac", "grad_channel_norm": "grad_norm"}
LAYER_KINDS = ("nonfinite", "exploding_gradients", "vanishing_gradients", "dead_filters", "dead_units",
               "frozen_filters", "frozen_layer")
SCALAR_KINDS = ("lr_jump", "update_ratio_jump", "loss_spike")  # shown on the scalars page (update: its layer mean)
SCALAR = "scalar:"  # the ranks page's prefix of a scalar in its statistic menu
PER_KIND = 3        # findings of one kind listed one by one; the rest counted on one line
RANKS_NAMED = 8     # ranks named on such a line
NO_STEPS = "no steps recorded yet: nothing to diagnose"


@dataclass
class Folded:
    """The findings of one kind beyond the first PER_KIND: how many, and on which ranks."""

    kind: str
    severity: str
    count: int
    ranks: list[int]

    @property
    def message(self) -> str:
        named = ", ".join(map(str, self.ranks[:RANKS_NAMED])) + (" ..." if len(self.ranks) > RANKS_NAMED else "")
        return f"... and {self.count} more {self.kind} findings" + (f" (ranks {named})" if self.ranks else "")


def evidence_link(run_id: str, f: Finding) -> str:
    """The address of the evidence page for a finding: `/evidence?runs=..&kind=..&layer=..&rank=..&stat=..&step=..
    &channels=..`, which draws the finding's statistic with the finding marked (evidence_figure)."""
    params: dict[str, object] = {"runs": run_id, "kind": f.kind}
    for key in ("rank", "layer", "stat", "step"):
        if getattr(f, key) is not None:
            params[key] = getattr(f, key)
    if f.channels:
        params["channels"] = ",".join(map(str, f.channels))
    return f"/evidence?{urlencode(params)}"


def page_link(run_id: str, f: Finding) -> str:
    """The page and selection of the dashboard that shows a finding's statistic: `/layers?runs=..&layer=..&rank=..
    &stat=..&step=..` for a layer's fault, `/ranks?runs=..&rank=..&stat=..` for a rank's, `/scalars` for a loss."""
    params: dict[str, object] = {"runs": run_id}
    if f.rank is not None:
        params["rank"] = f.rank
    if f.kind in LAYER_KINDS and f.layer:
        page = "/layers"
        params.update(layer=f.layer, stat=LAYER_STAT.get(f.stat, f.stat or "grad_norm"))
    elif f.kind == "nonfinite" or (f.kind in SCALAR_KINDS and f.stat in ("lr", "loss")):
        page = "/scalars"
        params["scalar"] = f.stat if f.kind in SCALAR_KINDS else "loss"
    elif f.kind == "update_ratio_jump":
        page = "/layers"
        params["stat"] = f.stat
    else:
        page = "/ranks"
        if f.layer:
            params["layer"] = f.layer
        if f.stat:
            params["stat"] = f.stat if f.layer else SCALAR + f.stat
    if f.step is not None:
        params["step"] = f.step
    if f.channels:
        params["channels"] = ",".join(map(str, f.channels))
    return f"{page}?{urlencode(params)}"


def where(f: Finding) -> str:
    """`rank 1 · conv2 · step 100 · activation` (all ranks when rank is None)."""
    parts = ["all ranks" if f.rank is None else f"rank {f.rank}", f.layer, None if f.step is None else f"step {f.step}",
             f.tensor]
    return " · ".join(str(p) for p in parts if p)


def finding_item(run_id: str, f: Finding) -> html.Li:
    """One finding with its "show" link; what followed from it as a nested list ("followed by ...")."""
    parts = [html.Span(f.kind, className="tv-finding-kind"), " ", html.Span(where(f), className="tv-note"),
             ": ", f.message, " ", dcc.Link("show", href=evidence_link(run_id, f), className="tv-finding-link")]
    if f.followed_by:
        parts.append(html.Ul([html.Li(["followed by ", *finding_item(run_id, g).children],
                                      className=f"tv-{g.severity} finding-{g.kind} tv-followed")
                              for g in f.followed_by], className="tv-followed-by"))
    return html.Li(parts, className=f"tv-{f.severity} finding-{f.kind}")


def fold(findings: list[Finding], per_kind: int = PER_KIND) -> list[Finding | Folded]:
    """What the panel lists: per kind, in the order the kinds first appear (worst first stays first), its first
    `per_kind` findings and then one Folded line counting the rest (1024 slow ranks are 4 lines, not 1024)."""
    by_kind: dict[str, list[Finding]] = {}
    for f in findings:
        by_kind.setdefault(f.kind, []).append(f)
    out: list[Finding | Folded] = []
    for kind, found in by_kind.items():
        out += found[:per_kind]
        rest = found[per_kind:]
        if rest:
            out.append(Folded(kind, rest[0].severity, len(rest), sorted({f.rank for f in rest if f.rank is not None})))
    return out


def _item(run_id: str, f: Finding | Folded) -> html.Li:
    if isinstance(f, Folded):
        return html.Li(f.message, className=f"tv-{f.severity} finding-{f.kind} tv-folded")
    return finding_item(run_id, f)


def findings_list(run_id: str, findings: list[Finding], steps: int | None = None) -> html.Ul:
    """The findings as a list, worst first, PER_KIND of each kind and the rest counted; a run with no steps
    (steps == 0) says so first; a clean run gets one line saying so."""
    items = [html.Li(NO_STEPS, className="tv-warning")] if steps == 0 else []
    items += [_item(run_id, f) for f in fold(findings)]
    return html.Ul(items or [html.Li(CLEAN_MESSAGE, className="tv-ok")], className="tv-health tv-diagnosis")


def findings_panel(run_id: str, read: Callable[[], tuple[list[Finding], int, str | None]]) -> html.Div:
    """The overview's health panel of a run (its only one): a heading and what read() returns: the findings, the
    most steps a rank recorded, and a note shown under them (None: none); a run that cannot be diagnosed says why."""
    note = None
    try:
        findings, steps, note = read()
        body = findings_list(run_id, findings, steps)
    except Exception as exc:  # shown in the panel and logged; the rest of the card still renders
        log.exception("diagnosis of %r failed", run_id)
        body = html.P(f"diagnosis failed: {exc}", className="tv-error")
    return html.Div([html.H4("diagnosis"), body] + ([html.P(note, className="tv-note tv-live-note")] if note else []),
                    className="tv-diagnosis-panel")


def most_steps(rank_summaries: dict) -> int:
    """The most steps a rank recorded (0: none yet)."""
    return max((s["steps"] for s in rank_summaries.values()), default=0)


def diagnosis_panel(run_id: str, run, max_points: int | None = None, rank_summaries: dict | None = None) -> html.Div:
    """The health panel of a run diagnosed in this process, as `tview diagnose` reads it (every recorded step: the
    same findings, at the same steps; max_points reads fewer, steps then exact to a stride). rank_summaries:
    run.rank_summaries(), when the caller has read them."""
    def read():
        summaries = rank_summaries if rank_summaries is not None else run.rank_summaries()
        return diagnose(run, max_points, summaries), most_steps(summaries), None
    return findings_panel(run_id, read)


def live_note(found: LiveFindings) -> str:
    """When a live run's findings were made, and how."""
    clock = time.strftime("%H:%M:%S", time.localtime(found.at))
    return (f"live run: findings as of {clock}, from every recorded step (`tview diagnose` in a process of its "
            f"own, {found.seconds:.1f} s); made again as the run grows")


def live_diagnosis_panel(run_id: str, folder: str, live: LiveDiagnoses, rank_summaries: dict) -> html.Div:
    """The health panel of a live run: `tview diagnose`'s findings made in a child process (LiveDiagnoses: the
    server reads none of the run for them, so its memory does not grow with the run), and when they were made."""
    def read():
        found = live.findings(folder)
        return found.findings, most_steps(rank_summaries), live_note(found)
    return findings_panel(run_id, read)


# -- the evidence a "show" link lands on, marked ---------------------------------------------
CHANNEL_STATS = ("act_channel_zero_frac", "grad_channel_norm")
MARK = "#d62728"


def _marked_step(fig, step: int | None) -> None:
    if step is not None:
        fig.add_vline(x=step, line_color=MARK, line_dash="dash", annotation_text=f"step {step}",
                      annotation_font_color=MARK, name="finding-step")


def _channel_heatmap(run, layer: str, stat: str, rank: int, step, channels: list[int]):
    """Channels x steps of a per-channel statistic of one layer, the finding's channels outlined in red."""
    import plotly.graph_objects as go
    steps, values = run.stat(stat, layer, rank, max_points=1000)
    if not len(steps):
        raise ValueError(f"no {stat} of {layer} recorded on rank {rank}")
    fig = go.Figure(go.Heatmap(x=steps, y=list(range(values.shape[1])), z=values.T, colorscale="Viridis",
                               colorbar={"title": stat}))
    for c in channels:  # outlined from the onset step to the end: where the channel is dead, frozen
        fig.add_shape(type="rect", x0=step if step is not None else steps[0], x1=steps[-1], y0=c - 0.5, y1=c + 0.5,
                      line_color=MARK, name=f"channel-{c}")
    fig.update_yaxes(title=f"channel of {layer}")
    return fig


def _layer_heatmap(run, layer: str, stat: str, rank: int):
    """Layers x steps of a per-layer statistic (log10 of norms), the finding's layer outlined in red."""
    import plotly.graph_objects as go
    steps, values = run.stat_matrix(stat, rank, max_points=1000)
    if not len(steps):
        raise ValueError(f"no {stat} recorded on rank {rank}")
    z = np.ma.filled(np.ma.masked_invalid(np.ma.asarray(values, dtype=np.float64)), np.nan)
    log = stat.endswith(("norm", "ratio")) and bool((z[np.isfinite(z)] > 0).all())
    fig = go.Figure(go.Heatmap(x=steps, y=run.layers, z=(np.log10(z) if log else z).T, colorscale="Viridis",
                               colorbar={"title": f"log10 {stat}" if log else stat}))
    if layer in run.layers:
        i = run.layers.index(layer)
        fig.add_shape(type="rect", x0=steps[0], x1=steps[-1], y0=i - 0.5, y1=i + 0.5, line_color=MARK,
                      name=f"layer-{layer}")
    return fig


def _rank_lines(run, name: str, rank: int | None, layer: str | None):
    """A scalar (or a layer's statistic) per rank, the finding's rank drawn thick and red."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for r in run.ranks[:RANKS_NAMED]:
        try:
            steps, values = run.stat(name, layer, r, max_points=2000) if layer else run.scalar(name, r, max_points=2000)
        except KeyError:
            continue
        mine = r == rank
        fig.add_trace(go.Scatter(x=steps, y=values, name=f"rank {r}", mode="lines",
                                 line={"color": MARK if mine else None, "width": 3 if mine else 1}))
    fig.update_yaxes(title=f"{name} of {layer}" if layer else name)
    return fig


def evidence_figure(run, kind: str, layer: str | None, stat: str | None, rank: int | None, step: int | None,
                    channels: list[int]):
    """The figure a finding's "show" link lands on, with the finding marked: the channels outlined on the layer's
    per-channel heatmap, or the layer outlined on the layers x steps heatmap, or the rank drawn in red among the
    ranks' lines; the onset step as a dashed red line. rank None: the first rank's view (or every rank's lines)."""
    shown = rank if rank is not None and rank in run.ranks else run.ranks[0]
    if stat in CHANNEL_STATS and layer:
        fig = _channel_heatmap(run, layer, stat, shown, step, channels)
    elif layer and stat in run.stat_names() and kind != "replicas_differ":
        fig = _layer_heatmap(run, layer, stat, shown)
    else:
        fig = _rank_lines(run, stat or "loss", rank, layer)
    _marked_step(fig, step)
    fig.update_layout(title=f"{kind}: " + where_text(rank, layer, step), xaxis_title="step",
                      margin={"l": 140, "r": 20, "t": 50, "b": 40})
    return fig


def where_text(rank, layer, step) -> str:
    return " · ".join(p for p in ("all ranks" if rank is None else f"rank {rank}", layer,
                                  None if step is None else f"step {step}") if p)
