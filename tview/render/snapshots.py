"""The snapshot slider's arithmetic: marks in steps that never run together, and the next snapshot when playing."""

from __future__ import annotations

import numpy as np

MARKS = 8  # labelled marks on the slider; every snapshot is still a stop on it


def snapshot_marks(steps: list[int], labelled: int = MARKS) -> dict:
    """Slider marks at every snapshot step: about `labelled` of them (the first and the last among them) carry
    their step number, the others an empty label (still a stop, no text to run into its neighbours)."""
    n = len(steps)
    shown = set(np.linspace(0, n - 1, min(n, labelled)).round().astype(int)) if n else set()
    return {int(s): (str(int(s)) if i in shown else "") for i, s in enumerate(steps)}


def next_snapshot(steps: list[int], current) -> int:
    """The snapshot after `current` (play), back to the first after the last."""
    later = [s for s in steps if current is None or s > current]
    return later[0] if later else steps[0]
