"""Cause before symptom: findings that follow from an earlier one within a few recorded steps fold under it
("followed by ..."), so the first finding listed is the earliest anomaly, not its loudest consequence."""

from __future__ import annotations

import numpy as np

from tview.diagnose.findings import KINDS, SEVERITY_ORDER, Finding

# Kinds from most causal to most consequential: at one step a kind earlier here is the cause of one later here.
CAUSE_ORDER = ("rank_missing", "rank_stopped", "slow_rank", "rank_lags", "lr_jump", "update_ratio_jump",
               "rank_diverges", "exploding_gradients", "nonfinite", "replicas_differ", "dead_filters", "dead_units",
               "gradient_cut", "frozen_filters", "frozen_layer", "loss_spike", "vanishing_gradients")
_BLOW_UP = {"update_ratio_jump", "exploding_gradients", "nonfinite", "dead_filters", "dead_units", "loss_spike",
            "vanishing_gradients", "replicas_differ"}
# What each kind can lead to (a finding folds only under one that can cause it).
CONSEQUENCES: dict[str, set[str]] = {
    "rank_stopped": {"rank_stopped", "rank_lags"},
    "lr_jump": _BLOW_UP,
    "update_ratio_jump": _BLOW_UP,
    "exploding_gradients": _BLOW_UP,
    "nonfinite": _BLOW_UP | {"rank_diverges"},
    "rank_diverges": {"loss_spike", "exploding_gradients"},
    "gradient_cut": {"exploding_gradients", "vanishing_gradients", "loss_spike", "frozen_filters", "frozen_layer"},
    "dead_filters": {"dead_filters", "dead_units", "vanishing_gradients", "loss_spike", "frozen_filters",
                     "frozen_layer", "gradient_cut"},
    "dead_units": {"dead_filters", "dead_units", "vanishing_gradients", "loss_spike", "frozen_layer", "gradient_cut"},
    "loss_spike": {"exploding_gradients", "update_ratio_jump", "vanishing_gradients", "dead_filters", "dead_units"},
}
SMALL_DEATH = 2    # dead_filters or dead_units on this many channels or fewer: a death clean training has too (a
#                    couple of ReLU channels), no cause of an error-level finding: it never heads one
FOLD_RECORDS = 20  # a consequence starts within this many recorded steps after its cause
JITTER = 1         # onsets found one recorded step apart count as one step (a cause may be dated one late)


def _order(kind: str) -> int:
    return CAUSE_ORDER.index(kind) if kind in CAUSE_ORDER else len(CAUSE_ORDER)


def _leads_to(cause: Finding, effect: Finding) -> bool:
    """The cause's kind can lead to the effect's; a small death (SMALL_DEATH channels or fewer) not to an error."""
    return effect.kind in CONSEQUENCES.get(cause.kind, ()) and not (_small_death(cause) and effect.severity == "error")


def _small_death(f: Finding) -> bool:
    return f.kind in ("dead_filters", "dead_units") and 0 < len(f.channels) <= SMALL_DEATH


def _can_cause(cause: Finding, effect: Finding, window: float) -> bool:
    if not _leads_to(cause, effect) or cause.step is None or effect.step is None:
        return False
    ranks_fit = cause.rank is None or effect.rank is None or cause.rank == effect.rank
    return ranks_fit and -JITTER * window / FOLD_RECORDS <= effect.step - cause.step <= window


def _in_time_order(findings: list[Finding], stride: float) -> list[Finding]:
    """By step, then CAUSE_ORDER; a cause found JITTER records after its effect moves before it."""
    out = sorted(findings, key=lambda f: (f.step is None, f.step if f.step is not None else 0, _order(f.kind)))
    for i in range(len(out) - 1, 0, -1):
        a, b = out[i - 1], out[i]
        if (a.step is not None and b.step is not None and 0 < b.step - a.step <= JITTER * stride
                and _order(b.kind) < _order(a.kind) and _leads_to(b, a)):
            out[i - 1], out[i] = b, a
    return out


def fold(findings: list[Finding], stride: float = 1.0) -> list[Finding]:
    """The findings that start a chain, each with the later findings it can cause (within FOLD_RECORDS records of
    `stride` steps, on its rank or on every rank) in followed_by; ordered worst chain first (a chain is as severe
    as its worst finding), then by step, then CAUSE_ORDER."""
    window = FOLD_RECORDS * stride
    ordered = _in_time_order(findings, stride)
    root_of: dict[int, Finding] = {}
    roots: list[Finding] = []
    for i, f in enumerate(ordered):
        cause = next((c for c in ordered[:i] if _can_cause(c, f, window)), None)
        if cause is not None and f.severity == "error" and _small_death(root_of[id(cause)]):
            cause = None  # an error never follows a small death, even through a finding that followed it
        if cause is None:
            roots.append(f)
            root_of[id(f)] = f
        else:
            root = root_of[id(cause)]
            root.followed_by.append(f)
            root_of[id(f)] = root
    for r in roots:
        r.followed_by.sort(key=lambda f: (f.step is None, f.step if f.step is not None else 0, _order(f.kind)))
    return sorted(roots, key=lambda r: (_chain_severity(r), r.step is None, r.step if r.step is not None else 0,
                                        _order(r.kind), r.rank if r.rank is not None else -1))


def _chain_severity(root: Finding) -> int:
    return min(SEVERITY_ORDER.get(KINDS.get(f.kind, ("warning",))[0], 2) for f in [root] + root.followed_by)


def record_stride(run) -> float:
    """The median number of steps between two recorded steps of the first rank (1 when it records every step)."""
    if not run.ranks:
        return 1.0
    steps = np.asarray(run.steps(run.ranks[0]))
    return float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
