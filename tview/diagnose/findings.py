"""The Finding record of `tview.diagnose`, the kinds it can name, and the order findings are listed in."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# kind -> (severity, tensor, what it means). Severity orders the list: errors before warnings.
KINDS: dict[str, tuple[str, str | None, str]] = {
    "nonfinite": ("error", None,
                  "NaN or Inf first appeared: the step, the rank, and the module where it shows first, in forward "
                  "order for activations, else in backward order for gradients (else the loss)"),
    "exploding_gradients": ("error", "gradient",
                            "a layer's gradient norm jumped far above its recent level (or grew far above its early "
                            "level): the first step, and the layer nearest the loss where it starts"),
    "replicas_differ": ("error", "weight",
                        "data-parallel ranks hold different weights after the optimizer step: the first step and "
                        "layer where the per-layer weight fingerprints (weight_norm, weight_sum) differ"),
    "rank_stopped": ("error", "time",
                     "a rank's shard ends without being closed while other ranks closed theirs (crashed or killed): "
                     "step is the first step it lacks"),
    "rank_missing": ("error", None, "a rank of the world size has no readable shard"),
    "vanishing_gradients": ("warning", "gradient",
                            "a layer's gradient norm fell far below its recent level and stays there: the first step "
                            "and the layer nearest the loss where it starts"),
    "dead_filters": ("warning", "activation",
                     "output channels whose activations stay zero (zero fraction >= 0.99) to the end of the run"),
    "dead_units": ("warning", "activation",
                   "units after a fully connected (Linear) layer whose activations stay zero (zero fraction >= 0.99) "
                   "to the end of the run, when they are a quarter of the layer's units or more (dying ReLUs)"),
    "frozen_filters": ("warning", "gradient",
                       "output channels whose gradient stays zero while the layer's other channels learn "
                       "(per-channel statistic grad_channel_norm)"),
    "rank_diverges": ("warning", "loss", "a rank's loss rose well above the other ranks' and stays there (bad data on "
                                         "that rank)"),
    "slow_rank": ("warning", "time", "a rank's busy time per step (or step time) stays well above the other ranks'"),
    "rank_lags": ("warning", "time", "a rank's last recorded step is well behind the furthest rank's"),
}
SEVERITY_ORDER = {"error": 0, "warning": 1}


@dataclass
class Finding:
    """One thing that went wrong: where (rank, layer, step, tensor, channels) and a sentence for people.

    rank None: every rank (or not one rank); layer None: not one layer; step None: no single step.
    `stat` names the recorded statistic that shows the evidence (for links to the dashboard)."""

    kind: str
    message: str
    rank: int | None = None
    layer: str | None = None
    step: int | None = None
    tensor: str | None = None
    channels: list[int] = field(default_factory=list)
    stat: str | None = None

    @property
    def severity(self) -> str:
        return KINDS.get(self.kind, ("warning",))[0]

    def to_dict(self) -> dict:
        """A plain JSON-ready dict (ints, strings, lists, None), severity included."""
        out = asdict(self)
        out["severity"] = self.severity
        out["channels"] = [int(c) for c in self.channels]
        return out

    def __getitem__(self, key: str):
        """finding["kind"] works like finding.kind (findings read like the dicts of --json)."""
        return self.to_dict()[key]


def make(kind: str, message: str, **where) -> Finding:
    """A finding of a known kind, its tensor filled in from the kind unless given."""
    if kind not in KINDS:
        raise ValueError(f"unknown finding kind {kind!r}; kinds: {', '.join(KINDS)}")
    where.setdefault("tensor", KINDS[kind][1])
    return Finding(kind, message, **where)


def worst_first(findings: list[Finding]) -> list[Finding]:
    """Errors before warnings; within each, the earliest step first (the first thing to go wrong is most often
    the cause of what follows); findings without a step after those with one; at one step, in the order of
    KINDS (NaN/Inf before the replica disagreement it causes)."""
    order = {k: i for i, k in enumerate(KINDS)}

    def key(f: Finding):
        return (SEVERITY_ORDER.get(f.severity, 2), f.step is None, f.step if f.step is not None else 0,
                order.get(f.kind, len(order)), f.rank if f.rank is not None else -1)
    return sorted(findings, key=key)
