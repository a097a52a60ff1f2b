"""Check: where NaN/Inf first appeared (the rank, the step, the first module in forward order)."""

from __future__ import annotations

import numpy as np

from tview.diagnose.checks.common import Context, matrix, scalar
from tview.diagnose.findings import Finding, declare, make
from tview.store.rank_summary import first_nonfinite_step
from tview.store.schema import SKIPPED_RUN

KINDS = declare({
    "nonfinite": ("error", None,
                  "NaN or Inf first appeared: the step, the rank, and the module where it shows first, in forward "
                  "order for activations (measured on every recorded step), else in backward order for gradients "
                  "(else the loss)"),
})


def _first_bad(steps, bad):
    """(step, row) of the first row of bool [steps, layers] with any True, or (None, None)."""
    rows = np.flatnonzero(bad.any(axis=1)) if bad.size else []
    return (int(steps[rows[0]]), int(rows[0])) if len(rows) else (None, None)


def _counts(run, names, rank, max_points):
    got = [matrix(run, n, rank, max_points) for n in names]
    got = [g for g in got if g is not None]
    if not got:
        return None
    steps = got[0][0]
    total = sum(np.nan_to_num(g[1], nan=0.0) for g in got if len(g[0]) == len(steps))
    measured = np.isfinite(got[0][1])
    return steps, total > 0, measured


def _rank_nonfinite(run, rank: int, max_points) -> dict:
    """Where NaN/Inf show on one rank: first step in activations, gradients, local gradients, the loss."""
    out = {}
    act = _counts(run, ("act_nan", "act_inf"), rank, max_points)
    if act is not None:
        out["act"] = _first_bad(act[0], act[1]) + (act,)
    grad = _counts(run, ("grad_nan", "grad_inf"), rank, max_points)
    if grad is not None:
        benign = _scaler_skips(run, rank, grad[0], max_points)[:, None]
        grad = (grad[0], grad[1] & ~benign, grad[2])
        out["grad"] = _first_bad(grad[0], grad[1]) + (grad,)
        local = matrix(run, "local_grad_norm", rank, max_points)
        if local is not None and len(local[0]) == len(grad[0]) and np.isfinite(local[1]).any():
            bad = ~np.isfinite(local[1]) & grad[2] & ~benign  # measured gradient, local norm missing: not finite
            out["local"] = _first_bad(grad[0], bad) + ((grad[0], bad, grad[2]),)
    loss = scalar(run, "loss", rank, max_points)
    if loss is not None and len(loss[0]):
        bad = np.flatnonzero(~np.isfinite(loss[1]))
        out["loss"] = (int(loss[0][bad[0]]) if len(bad) else None, None, None)
    out["any"] = (first_nonfinite_step(run.first_nonfinite(rank)), None, None)
    return out


def _scaler_skips(run, rank: int, steps: np.ndarray, max_points) -> np.ndarray:
    """bool per step: the optimizer skipped it (optimizer_skipped 1: GradScaler found NaN/Inf gradients and did not
    step), its loss finite where recorded, outside a run of SKIPPED_RUN or more such records: its NaN/Inf gradients
    are the scaler at work."""
    skipped = scalar(run, "optimizer_skipped", rank, max_points)
    if skipped is None:
        return np.zeros(len(steps), dtype=bool)
    on = np.isin(steps, np.asarray(skipped[0])[np.asarray(skipped[1]) == 1])
    loss = scalar(run, "loss", rank, max_points)
    if loss is not None:  # a NaN/Inf loss is a fault, whatever the scaler did
        on &= ~np.isin(steps, np.asarray(loss[0])[~np.isfinite(np.asarray(loss[1], dtype=np.float64))])
    edges = np.flatnonzero(np.diff(np.concatenate(([0], on.astype(np.int8), [0]))))
    for start, end in zip(edges[::2], edges[1::2]):  # each run of skipped steps
        if end - start >= SKIPPED_RUN:
            on[start:end] = False
    return on


def first_nonfinite_ranks(run, rank_summaries: dict | None) -> list[int]:
    """The readable ranks whose first NaN/Inf (exact: kept by the writer, in the rank summaries' first_nonfinite)
    is the run's earliest; every readable rank when there are no summaries. Only these can hold the finding: a
    rank's NaN/Inf seen in its read series is never before its own first."""
    if rank_summaries is None:
        return list(run.ranks)
    first = {}
    for r in run.ranks:
        summary = rank_summaries.get(r)
        if summary is not None and summary.problem:
            continue  # unreadable: nothing to read there
        if summary is None or summary.first_nonfinite is None:
            return list(run.ranks)  # no summary of this rank: read them all
        if summary.first_nonfinite_step() is not None:
            first[r] = summary.first_nonfinite_step()
    earliest = min(first.values(), default=None)
    return [r for r, s in first.items() if s == earliest]


def check_nonfinite(run, max_points=None, rank_summaries: dict | None = None) -> list[Finding]:
    """The first NaN/Inf of the run: earliest step over ranks, then activations (first module in forward order),
    else this rank's own gradients before the all-reduce, else gradients (first module in backward order). With
    rank_summaries only the ranks where it first appeared are read (first_nonfinite_ranks)."""
    per = {r: _rank_nonfinite(run, r, max_points) for r in first_nonfinite_ranks(run, rank_summaries)}
    starts = [v[0] for p in per.values() for v in p.values() if v[0] is not None]
    if not starts:
        return []
    s = min(starts)
    for tensor, key, pick in (("activation", "act", min), ("gradient", "local", max), ("gradient", "grad", max)):
        ranks = [r for r, p in per.items() if key in p and p[key][0] == s]
        if ranks:
            return [_nonfinite_finding(run, per, ranks, s, tensor, key, pick)]
    ranks = [r for r, p in per.items() if p.get("loss", (None,))[0] == s]
    if ranks:
        who = ranks[0] if len(ranks) < len(run.ranks) else None
        return [make("nonfinite", f"loss became NaN/Inf at step {s} on {_ranks_text(ranks, run)} "
                     "(activations and gradients not measured non-finite at that step)", rank=who, step=s,
                     tensor="loss", stat="loss")]
    return [make("nonfinite", f"NaN/Inf first recorded at step {s}", step=s)]


def check(ctx: Context) -> list[Finding]:
    return check_nonfinite(ctx.run, ctx.max_points, ctx.rank_summaries)


def _ranks_text(ranks, run) -> str:
    if len(ranks) == len(run.ranks) and len(ranks) > 1:
        return "every rank"
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def forward_positions(run) -> list:
    """Each layer's position in the forward pass: where the Recorder saw its hook fire (stores since this field),
    else its place in the model's module list; layers never seen run after the others."""
    info = run.layer_info
    if not any("forward" in layer for layer in info):
        return list(range(len(info)))
    return [(layer.get("forward", len(info)), i) for i, layer in enumerate(info)]


def _sources(run, layers: np.ndarray) -> np.ndarray:
    """Of the layers showing NaN/Inf, those that can make it: layers with parameters (an activation module maps
    finite inputs to finite outputs, and one module object may be called at several places, so its position in
    the model's module list is not where it ran); every layer if none has parameters."""
    params = [i for i in layers if run.layer_info[i].get("kind") != "activation"]
    return np.asarray(params if params else layers)


def _nonfinite_finding(run, per, ranks, s, tensor, key, pick) -> Finding:
    layer_of = {}
    position = forward_positions(run)
    for r in ranks:
        steps, bad, _ = per[r][key][2]
        layer_of[r] = pick(_sources(run, np.flatnonzero(bad[per[r][key][1]])), key=position.__getitem__)
    best = pick(layer_of.values(), key=position.__getitem__)
    at = [r for r in ranks if layer_of[r] == best]
    rank = at[0] if len(at) < len(run.ranks) or len(run.ranks) == 1 else None
    layer = run.layers[best]
    order = "forward" if tensor == "activation" else "backward"
    extra = " (this rank's own gradient, before the all-reduce)" if key == "local" else ""
    stat = "act_nan" if tensor == "activation" else ("local_grad_norm" if key == "local" else "grad_nan")
    steps = np.asarray(per[at[0]][key][2][0])
    before = steps[steps < s]
    since = f" (first seen there: it came after step {int(before.max())}, the record before)" \
        if len(before) and s - int(before.max()) > 1 else ""
    return make("nonfinite", f"NaN/Inf first at step {s}{since} on {_ranks_text(at, run)}: {tensor}s of {layer}"
                f"{extra}, the first module with parameters in {order} order", rank=rank, layer=layer, step=s,
                tensor=tensor, stat=stat)
