"""The Finding record of `tview.diagnose`, the kinds it can name (declared by the check modules) and their order."""

from __future__ import annotations

from dataclasses import dataclass, field

# kind -> (severity, tensor, what it means), filled by the check modules (tview.diagnose.checks) as they are
# imported: a check declares its kinds beside the code that finds them.
KINDS: dict[str, tuple[str, str | None, str]] = {}
SEVERITY_ORDER = {"error": 0, "warning": 1}


def declare(kinds: dict[str, tuple[str, str | None, str]]) -> dict[str, tuple[str, str | None, str]]:
    """Add a check module's kinds to KINDS (a kind named twice is a mistake); returns them."""
    for kind, row in kinds.items():
        if kind in KINDS and KINDS[kind] != row:
            raise ValueError(f"finding kind {kind!r} declared twice")
        KINDS[kind] = row
    return kinds


@dataclass
class Finding:
    """One thing that went wrong: where (rank, layer, step, tensor, channels) and a sentence for people.

    rank None: every rank (or not one rank); layer None: not one layer; step None: no single step.
    `stat` names the recorded statistic that shows the evidence (for links to the dashboard);
    `followed_by`: the findings that follow from this one within a few steps (its consequences)."""

    kind: str
    message: str
    rank: int | None = None
    layer: str | None = None
    step: int | None = None
    tensor: str | None = None
    channels: list[int] = field(default_factory=list)
    stat: str | None = None
    followed_by: list["Finding"] = field(default_factory=list)

    @property
    def severity(self) -> str:
        return KINDS.get(self.kind, ("warning",))[0]

    def to_dict(self) -> dict:
        """A plain JSON-ready dict (ints, strings, lists, None), severity included; followed_by as such dicts."""
        return {"kind": self.kind, "message": self.message, "rank": self.rank, "layer": self.layer,
                "step": self.step, "tensor": self.tensor, "channels": [int(c) for c in self.channels],
                "stat": self.stat, "severity": self.severity, "followed_by": [f.to_dict() for f in self.followed_by]}

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
    """Errors before warnings; within each, the earliest step first; findings without a step after those with
    one; at one step, in the order the kinds were declared."""
    order = {k: i for i, k in enumerate(KINDS)}

    def key(f: Finding):
        return (SEVERITY_ORDER.get(f.severity, 2), f.step is None, f.step if f.step is not None else 0,
                order.get(f.kind, len(order)), f.rank if f.rank is not None else -1)
    return sorted(findings, key=key)
