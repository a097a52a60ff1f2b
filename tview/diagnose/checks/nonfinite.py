"""Check: where NaN/Inf first appeared (the rank, the step, and the activation, loss, gradient or weight of the
module where it shows first)."""

from __future__ import annotations

import numpy as np

from tview.diagnose.checks.common import Context, matrix, scalar
from tview.diagnose.findings import Finding, declare, make
from tview.store.rank_summary import first_nonfinite_step
from tview.store.schema import SKIPPED_RUN

KINDS = declare({
    "nonfinite": ("error", None,
                  "NaN or Inf first appeared: the step, the rank, and where it shows first, in the order a step makes "
                  "them: the activations (the first module in forward order), the loss, the gradients (the first "
                  "module in backward order), the weights after the optimizer step (the first module in forward "
                  "order)"),
})

# Where a NaN/Inf can first show within one step, in the order the step makes them: (tensor, key, pick of layers).
STEP_ORDER = (("activation", "act", min), ("loss", "loss", None), ("gradient", "local", max),
              ("gradient", "grad", max), ("weight", "weight", min))
WEIGHT_STATS = ("weight_sum", "weight_norm")  # weight_sum (float64 sums) is NaN/Inf only with a NaN/Inf weight


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
    """Where NaN/Inf show on one rank: {key of STEP_ORDER: (first step, its row, (steps, bad [steps, layers],
    measured))} for activations, local gradients, gradients and weights; "loss": (first step, None, the loss
    then); "any": the writer's first step."""
    out = {}
    act = _counts(run, ("act_nan", "act_inf"), rank, max_points)
    if act is not None:
        out["act"] = _first_bad(act[0], act[1]) + (act,)
    out.update(_rank_gradients(run, rank, max_points))
    loss = scalar(run, "loss", rank, max_points)
    if loss is not None and len(loss[0]):
        bad = np.flatnonzero(~np.isfinite(np.asarray(loss[1], dtype=np.float64)))
        out["loss"] = (int(loss[0][bad[0]]), None, float(loss[1][bad[0]])) if len(bad) else (None, None, None)
    weights = _weight_rows(run, rank, max_points)
    if weights is not None:
        out["weight"] = _first_bad(weights[0], weights[1]) + (weights,)
    out["any"] = (first_nonfinite_step(run.first_nonfinite(rank)), None, None)
    return out


def _rank_gradients(run, rank: int, max_points) -> dict:
    """"grad" (the gradients a rank steps with, the GradScaler's own skips left out) and "local" (its own gradients
    before the all-reduce) of _rank_nonfinite, where recorded."""
    out = {}
    grad = _counts(run, ("grad_nan", "grad_inf"), rank, max_points)
    if grad is not None:
        benign = _scaler_skips(run, rank, grad[0], max_points)[:, None]
        grad = (grad[0], grad[1] & ~benign, grad[2])
        out["grad"] = _first_bad(grad[0], grad[1]) + (grad,)
        local = matrix(run, "local_grad_norm", rank, max_points)
        if local is not None and len(local[0]) == len(grad[0]) and np.isfinite(local[1]).any():
            bad = ~np.isfinite(local[1]) & grad[2] & ~benign  # measured gradient, local norm missing: not finite
            out["local"] = _first_bad(grad[0], bad) + ((grad[0], bad, grad[2]),)
    return out


def _weight_rows(run, rank: int, max_points):
    """(steps, bad, measured [steps, layers]) of a rank's weights as the optimizer step left them: bad where the
    layer's weight_sum (else weight_norm) is NaN/Inf; None when neither is recorded."""
    for name in WEIGHT_STATS:
        try:
            steps, m = run.stat_matrix(name, rank, max_points=max_points)
        except KeyError:
            continue
        measured = ~np.ma.getmaskarray(m)
        return np.asarray(steps), ~np.isfinite(np.ma.getdata(m).astype(np.float64)) & measured, measured
    return None


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
    """The first NaN/Inf of the run: earliest step over ranks, then in the order the step makes them (STEP_ORDER):
    activations (first module in forward order), else the loss, else this rank's own gradients before the
    all-reduce, else gradients (first module in backward order), else the weights optimizer.step() wrote (weight_sum
    or weight_norm NaN/Inf: first module in forward order). With rank_summaries only the ranks where it first
    appeared are read (first_nonfinite_ranks): the writer keeps the first step of each count and of weight_sum, so a
    NaN/Inf weight on a run's last record is found too."""
    per = {r: _rank_nonfinite(run, r, max_points) for r in first_nonfinite_ranks(run, rank_summaries)}
    starts = [v[0] for p in per.values() for v in p.values() if v[0] is not None]
    if not starts:
        return []
    s = min(starts)
    for tensor, key, pick in STEP_ORDER:
        ranks = [r for r, p in per.items() if key in p and p[key][0] == s]
        if ranks and key == "loss":
            return [_loss_finding(run, per, ranks, s)]
        if ranks:
            return [_nonfinite_finding(run, per, ranks, s, tensor, key, pick)]
    return [make("nonfinite", f"NaN/Inf first recorded at step {s}", step=s)]


def _loss_finding(run, per, ranks, s) -> Finding:
    """The loss is the first NaN/Inf: no activation of the step was recorded NaN/Inf before it (on any rank read),
    and the step's gradients and weights come from it."""
    who = ranks[0] if len(ranks) < len(run.ranks) or len(run.ranks) == 1 else None
    value = per[ranks[0]]["loss"][2]
    value = "NaN" if np.isnan(value) else ("Inf" if value > 0 else "-Inf")
    measured = all(_measured_at(per[r].get("act"), s) for r in ranks)
    acts = ("every activation of that step recorded finite there: the loss computation itself (the loss function, "
            "or what is done to the model's output before it) made it" if measured else
            "the activations were not recorded at that step")
    return make("nonfinite", f"loss was {value} at step {s} on {_ranks_text(ranks, run)}, the first NaN/Inf of the "
                f"run: {acts}; the gradients of that step came from it", rank=who, step=s, tensor="loss",
                stat="loss")


def _measured_at(rows, s: int) -> bool:
    """Were any layer's activations measured at step s ((first step, row, (steps, bad, measured)) of a rank)?"""
    if rows is None:
        return False
    steps, _, measured = rows[2]
    hit = np.flatnonzero(np.asarray(steps) == s)
    return bool(len(hit) and measured[hit[0]].any())


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
    order = "backward" if tensor == "gradient" else "forward"
    extra, after, stat = _KEY_TEXT[key]
    if key == "weight":
        stat = next((n for n in WEIGHT_STATS if n in run.stat_names()), stat)
        after = after.format(stat=stat, s=s)
    steps = np.asarray(per[at[0]][key][2][0])
    before = steps[steps < s]
    since = f" (first seen there: it came after step {int(before.max())}, the record before)" \
        if len(before) and s - int(before.max()) > 1 else ""
    return make("nonfinite", f"NaN/Inf first at step {s}{since} on {_ranks_text(at, run)}: {tensor}s of {layer}"
                f"{extra}, the first module with parameters in {order} order{after}", rank=rank, layer=layer, step=s,
                tensor=tensor, stat=stat)


_KEY_TEXT = {  # key -> (what the message adds after "<tensor>s of <layer>", and at its end; the stat that shows it)
    "act": ("", "", "act_nan"),
    "local": (" (this rank's own gradient, before the all-reduce)", "", "local_grad_norm"),
    "grad": ("", "", "grad_nan"),
    "weight": (" after optimizer.step()", " ({stat} NaN/Inf); no activation, loss or gradient was recorded NaN/Inf at "
               "step {s}, so the update itself wrote it: look at the optimizer's state (a momentum buffer, Adam's "
               "moments) or its learning rate", "weight_norm"),
}
