"""Text and JSON forms of `tview.diagnose` findings, for the command line (`tview diagnose RUN [--json]`)."""

from __future__ import annotations

import json

from tview.diagnose import CLEAN_MESSAGE, diagnose
from tview.diagnose.findings import Finding


def finding_line(f: Finding) -> str:
    """`[error] nonfinite (rank 1 conv2 step 100 activation): message`."""
    where = " ".join(p for p in (
        f"rank {f.rank}" if f.rank is not None else "all ranks",
        f.layer or "", f"step {f.step}" if f.step is not None else "", f.tensor or "") if p)
    return f"[{f.severity}] {f.kind} ({where}): {f.message}"


def finding_lines(f: Finding) -> list[str]:
    """The finding's line, then one indented `followed by` line per finding folded under it."""
    return [finding_line(f)] + [f"    followed by {finding_line(g)}" for g in f.followed_by]


def diagnose_text(path: str, as_json: bool = False, max_points: int | None = None) -> str:
    """The findings of the run at `path`, the cause first: lines each (a clean run: one line saying so), or a
    JSON list of objects (kind, rank, layer, step, tensor, channels, message, severity, stat, followed_by)."""
    findings = diagnose(path, max_points)
    if as_json:
        return json.dumps([f.to_dict() for f in findings], indent=1)
    if not findings:
        return CLEAN_MESSAGE
    return "\n".join(line for f in findings for line in finding_lines(f))
