"""Schedules (step -> bool: record this step?) and presets (named whole configurations)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from tview.errors import ConfigError

Schedule = Callable[[int], bool]


class every:
    """Every n-th step, starting at step `start` (default 0)."""

    def __init__(self, n: int, start: int = 0):
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"every: n must be a positive integer, got {n!r}")
        self.n, self.start = n, start

    def __call__(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.n == 0

    def __repr__(self):
        return f"every({self.n})"


class log_spaced:
    """Steps 0..dense-1, then about `per_decade` steps per decade: dense early, sparse late."""

    def __init__(self, per_decade: int = 10, dense: int = 10):
        if per_decade < 1:
            raise ConfigError(f"log_spaced: per_decade must be >= 1, got {per_decade!r}")
        self.per_decade, self.dense = per_decade, dense

    def __call__(self, step: int) -> bool:
        if step < self.dense:
            return True
        k = round(self.per_decade * math.log10(step))
        return any(round(10 ** (j / self.per_decade)) == step for j in (k - 1, k, k + 1))

    def __repr__(self):
        return f"log_spaced({self.per_decade})"


class at_steps:
    """Exactly the listed steps."""

    def __init__(self, steps: Iterable[int]):
        steps = list(steps)
        bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0]
        if bad:
            raise ConfigError(f"at_steps: steps must be non-negative integers, got {bad[:5]!r}")
        self.steps = frozenset(int(s) for s in steps)

    def __call__(self, step: int) -> bool:
        return step in self.steps

    def __repr__(self):
        return f"at_steps({sorted(self.steps)})"


def as_schedule(value, name: str) -> Schedule:
    """An int n means every(n); a list means at_steps; a callable is used as it is."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected an int, a list of steps or a callable, got {value!r}")
    if isinstance(value, int):
        return every(value)
    if isinstance(value, (list, tuple, set, frozenset, range)):
        return at_steps(value)
    if callable(value):
        return value
    raise ConfigError(f"{name}: expected an int, a list of steps or a callable, got {value!r}")


@dataclass(frozen=True)
class Preset:
    """What a recorded step measures.

    Every recorded step: gradient and weight statistics, scalars, and (with
    `activations_every_step`) the cheap activation statistics (mean, std, min, max, NaN, Inf).
    Every `detail_every`-th recorded step also: zero fractions (overall and per channel), channel
    means, histograms and the weight trajectory (and the cheap activation statistics when they are
    not every step).
    """

    name: str
    grads: bool = True
    weights: bool = True
    activations: bool = True
    channels: bool = True
    histograms: bool = True
    detail_every: int = 1
    act_sample: int | None = 256  # activation statistics on the first examples of the batch, enough for this
    # many values per channel (a 16x16 map: one example); None: on every value (NaN and Inf: always every value)
    trajectory: bool = True
    activations_every_step: bool = True  # False: activation statistics on detail steps only
    sentinels: bool = True  # NaN/Inf flags and zero fractions of every layer's output, every recorded step


PRESETS = {
    # Gradient and weight statistics and the sentinels (NaN, Inf and zero fractions of every layer's output)
    # only: the cheapest useful configuration (per-channel gradient norms and the distance from
    # initialization on every 20th recorded step).
    "economy": Preset("economy", activations=False, channels=False, histograms=False, trajectory=False,
                      detail_every=20),
    # Gradient and weight statistics, update ratio and scalars on every recorded step; on every 40th
    # recorded step also activation statistics (moments, per-channel means, histograms: over the sample of
    # examples the sentinels read), the trajectory, per-channel gradient norms, the distance from
    # initialization and (by default) the snapshots.
    "default": Preset("default", detail_every=40, activations_every_step=False),
    # As default, with the cheap activation statistics on every recorded step and the rest on
    # every 10th recorded step.
    "activations": Preset("activations", detail_every=10),
    # Everything on every recorded step, activation statistics over every value.
    "full": Preset("full", detail_every=1, act_sample=None),
}


def get_preset(preset, **overrides) -> Preset:
    if isinstance(preset, Preset):
        base = preset
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    return replace(base, **overrides) if overrides else base
