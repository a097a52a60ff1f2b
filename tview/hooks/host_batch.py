"""Activation statistics on the CPU's own path: every output's sample copied into one buffer, channel by channel,
and each statistic of every channel of every output reduced by one numpy `reduceat` over it.

On the CPU there are no launches to save, only Python calls and memory passes. The Recorder keeps each output's
reference as its hook fires (a hook runs between layers, where every call is slow: the CPU's caches hold the
layer's data) and copies the samples (the values ActivationBatch samples) where the forward pass ends, in one
loop; an output that a later layer modifies in place (BatchNorm, then ReLU(inplace=True)) is copied in its own
hook. How the sample is taken from an output of a given shape and strides is worked out once. NaN and Inf still
come from norms of the whole outputs, taken only where the model's output is not finite.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tview.hooks.activation_batch import (
    HIST_CELLS,
    HOW,
    PER_CHANNEL,
    ActivationBatch,
    layout_rows,
    layout_values,
    sample_examples,
)
from tview.hooks.probes import hist_bins_host

_PLANS: dict[tuple, tuple] = {}  # (shape, strides, per_channel) -> how the sample is taken (see _plan)
_PLAN_LIMIT = 4096


def _plan(a: np.ndarray, nhwc: bool, per_channel: int | None) -> tuple:
    """(kind, examples, channels, values per example, thinning step, layout) of the sample of output `a`: the values
    flat_sample takes (whole examples from the start, every k-th position of one example that holds more than
    enough)."""
    if a.ndim < 2:
        return "flat", 1, 1, a.size, 1, ("flat", a.size)
    c, n, e = a.shape[1], math.prod(a.shape[2:]), sample_examples(a, per_channel)
    step = n // per_channel if e == 1 and per_channel and n > per_channel else 1
    kept = len(range(0, n, step))
    return ("nhwc" if nhwc else "nchw"), e, c, n, step, ("nhwc" if nhwc else "nchw", e, c, kept)


def sample_plan(a: np.ndarray, per_channel: int | None) -> tuple:
    key = (a.shape, a.strides, per_channel)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _PLAN_LIMIT:
            _PLANS.clear()
        nhwc = a.ndim == 4 and not a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous
        plan = _PLANS[key] = _plan(a, nhwc, per_channel)
    return plan


def copy_sample(a: np.ndarray, plan: tuple, out: np.ndarray) -> None:
    """The sample of output `a` into `out` (flat, float32), channel by channel: [channels, examples, values]."""
    kind, e, c, n, step, layout = plan
    s = layout[-1]
    if kind == "flat":
        np.copyto(out, a.reshape(-1))
    elif kind == "nchw":
        np.copyto(out.reshape(c, e, s).transpose(1, 0, 2), a[:e].reshape(e, c, n)[:, :, ::step])
    else:  # channels last: [examples, positions, channels] in memory
        np.copyto(out.reshape(c, e, s).transpose(1, 2, 0), a[:e].transpose(0, 2, 3, 1).reshape(e, n, c)[:, ::step])


def as_host_array(t: torch.Tensor, per_channel: int | None) -> np.ndarray:
    """An output as numpy: float32, itself; another dtype, its sampled examples converted (a copy of them only)."""
    if t.dtype == torch.float32:
        return t.numpy(force=True)
    e = sample_examples(t, per_channel) if t.dim() >= 2 else None
    return t.detach()[:e].float().numpy()


class HostBatch(ActivationBatch):
    """ActivationBatch on the CPU's own path, filled output by output (`add`) and closed where the forward pass ends
    (`close`); each statistic is reduced from the buffer when a probe first asks for it. `buffer`: a float32 array to
    reuse for the samples (grown when short; the batch's `buffer` is the one it used)."""

    layouts = ()  # the samples' layouts, set as each output is added (not ActivationBatch's lazy view)

    def __init__(self, per_channel: int | None = PER_CHANNEL, buffer: np.ndarray | None = None):  # noqa: D107
        self.per_channel = per_channel
        self.buffer = buffer if buffer is not None else np.empty(1 << 16, dtype=np.float32)
        self.outputs, self.layouts, self.indices, self.used, self.scan = [], [], [], 0, True
        self._memo: dict = {}

    @classmethod
    def of(cls, outputs: list[torch.Tensor], per_channel: int | None = PER_CHANNEL, scan: bool = True) -> HostBatch:
        batch = cls(per_channel)
        for t in outputs:
            batch.add(t)
        return batch.close(scan)

    def add(self, output: torch.Tensor, index: int | None = None) -> None:
        """Copy this output's sample into the buffer now, channel by channel (`index`: its layer's, kept)."""
        a = as_host_array(output, self.per_channel)
        plan = sample_plan(a, self.per_channel)
        layout = plan[-1]
        n = layout_values(layout) * layout_rows(layout)
        if self.used + n > len(self.buffer):
            grown = np.empty(max(2 * len(self.buffer), self.used + n), dtype=np.float32)
            grown[:self.used] = self.buffer[:self.used]
            self.buffer = grown
        copy_sample(a, plan, self.buffer[self.used:self.used + n])
        self.used += n
        self.outputs.append(output)
        self.layouts.append(layout)
        self.indices.append(index)

    def close(self, scan: bool = True) -> HostBatch:
        """The forward pass ended: `scan=False` where the outputs are known to hold no NaN or Inf."""
        self.scan = scan
        if scan:  # the norms will read the whole outputs
            self.outputs = [t.detach() for t in self.outputs]
        self.layouts = tuple(self.layouts)
        widths = [layout_rows(lay) for lay in self.layouts]
        self.row_start = [0, *np.cumsum(widths).tolist()]
        self.n_rows = self.row_start[-1]
        per_row = np.repeat([layout_values(lay) for lay in self.layouts], widths)
        self.starts = np.concatenate([[0], np.cumsum(per_row)[:-1]]).astype(np.intp)
        self.empty = per_row == 0
        return self

    @property
    def values_array(self) -> np.ndarray:
        return self.buffer[:self.used]

    def _row_stat(self, key: str) -> torch.Tensor:
        return self._once(key, lambda: torch.from_numpy(self._reduce(key).astype(np.float32)))

    def _reduce(self, key: str) -> np.ndarray:
        """Every row's statistic `key` in one reduceat over the buffer (an empty row: 0, or +-inf extremes)."""
        a, full = self.values_array, ~self.empty
        out = np.full(self.n_rows, {"amin": np.inf, "amax": -np.inf}.get(key, 0.0))
        if not full.any():
            return out
        starts = self.starts[full] if not full.all() else self.starts
        if key == "zeros":
            out[full] = np.add.reduceat((a == 0).view(np.uint8), starts, dtype=np.int32)
        elif key in ("sums", "sumsq"):
            out[full] = np.add.reduceat(a if key == "sums" else np.square(a), starts, dtype=np.float64)
        else:
            out[full] = (np.minimum if HOW[key] == "amin" else np.maximum).reduceat(a, starts)
        return out

    def _histograms(self) -> torch.Tensor:
        b = hist_bins_host(self.values_array)
        ends = np.cumsum([layout_values(lay) * layout_rows(lay) for lay in self.layouts])
        counts = [np.bincount(b[e - n:e], minlength=HIST_CELLS) for e, n in zip(ends, np.diff(ends, prepend=0))]
        return torch.from_numpy(np.stack(counts).astype(np.float32))
