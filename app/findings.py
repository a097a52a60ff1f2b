"""The overview's diagnosis panel: tview.diagnose findings, the cause first with what followed from it, each linking
to the page and selection that shows its evidence (the layer heatmap at that layer, the rank focused, the step and
channels in the address; the ranks page for rank faults; the scalars page for the lr and the loss)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from dash import dcc, html

from tview.diagnose import CLEAN_MESSAGE, diagnose
from tview.diagnose.findings import Finding

from .common import log

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
    """The address of the page and selection that shows a finding's evidence: `/layers?runs=..&layer=..&rank=..
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


def diagnosis_panel(run_id: str, run, max_points: int | None = None, rank_summaries: dict | None = None) -> html.Div:
    """The overview's health panel of a run (its only one): a heading and the findings of `run`, read as
    `tview diagnose` reads them (every recorded step: the same findings, at the same steps; max_points reads
    fewer, steps then exact to a stride); a run that cannot be diagnosed says why. rank_summaries:
    run.rank_summaries(), when the caller has read them."""
    try:
        rank_summaries = rank_summaries if rank_summaries is not None else run.rank_summaries()
        steps = max((s["steps"] for s in rank_summaries.values()), default=0)
        body = findings_list(run_id, diagnose(run, max_points, rank_summaries), steps)
    except Exception as exc:  # shown in the panel and logged; the rest of the card still renders
        log.exception("diagnosis of %r failed", run_id)
        body = html.P(f"diagnosis failed: {exc}", className="tv-error")
    return html.Div([html.H4("diagnosis"), body], className="tv-diagnosis-panel")
