"""A cost budget: the share of training time tview may take, kept by recording every k-th scheduled step.

k (the stride) is a power of two, chosen from what tview measured it cost (its time on the training thread and its
writer thread's CPU) over the wall time it was measured in. Every rank recording scheduled step number n (counted
from 0) when n is a multiple of its own k, the steps a rank with a larger k records are recorded by every rank
with a smaller one: ranks still meet on common steps.
"""

from __future__ import annotations

import math
import numbers

from tview.errors import ConfigError

MAX_STRIDE = 1 << 16
MIN_RECORDS = 4  # a window measures at least this many records
MIN_SECONDS = 2.0  # and this much wall time (the writer works once a second: its CPU has come in)
LOWER_BELOW = 0.8  # the stride halves when the share at half the stride would stay under this part of the budget


def check_budget(budget) -> float | None:
    """None (no budget) or a share of training time in (0, 1)."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0 < budget < 1 \
            or not math.isfinite(budget):
        raise ConfigError(f"budget must be a share of training time between 0 and 1 (0.05: 5%), got {budget!r}")
    return float(budget)


class CostBudget:
    """Which scheduled steps to record so that tview's measured share of the wall time stays under `share`."""

    def __init__(self, share: float):
        self.share = share
        self.stride = 1
        self._window: tuple | None = None  # (start, spent then, records since); from the first record on (the
        # first record's own cost, its file made, is no measure of the others)
        self.over: float | None = None  # the share measured when the stride last went up

    def take(self, ordinal: int) -> bool:
        """Whether the scheduled step number `ordinal` (from 0) is recorded at the current stride."""
        return ordinal % self.stride == 0

    def recorded(self, now: float, spent: float) -> None:
        """A step was recorded; `spent`: tview's seconds so far (training thread and writer). Once a window holds
        enough, the stride adapts to the share measured in it."""
        if self._window is None:
            self._window = (now, spent, 0)
            return
        start, spent_then, records = self._window
        records += 1
        wall = now - start
        if records < MIN_RECORDS or wall < MIN_SECONDS:
            self._window = (start, spent_then, records)
            return
        measured = (spent - spent_then) / wall
        self._window = (now, spent, 0)
        self.stride = next_stride(self.stride, measured, self.share)
        if measured > self.share:
            self.over = measured


def next_stride(stride: int, measured: float, share: float) -> int:
    """The stride for the next window, from the share `measured` at `stride`. tview's cost per record over the
    training's own time per scheduled step is c = m k / (1 - m); at stride k' the share is c / (c + k'): up (a power
    of two) to the least k' that keeps it within `share`; halved when half the stride would keep it well within."""
    m = min(measured, 0.99)  # (the writer's CPU, on another core, can exceed the wall time)
    cost = m * stride / (1 - m)
    if measured > share:
        want = cost * (1 - share) / share
        return min(MAX_STRIDE, max(stride * 2, 1 << math.ceil(math.log2(want))))
    if stride > 1 and cost / (cost + stride / 2) < LOWER_BELOW * share:
        return stride >> 1
    return stride
