"""Activation probes: statistics of one module's output, computed in its forward hook.

Each returns *partial* statistics (sums, counts, extremes) that merge across calls of the module in
one step (a module used twice, gradient accumulation); the writer thread merges and finalizes them.
Counts (zeros, NaN, Inf) and per-channel statistics are over the whole output; moments and the
histogram may be estimated from a sample, which their tables record (sample_n of total_n).
"""

from __future__ import annotations

import numpy as np
import torch

from tview.hooks.probes import DETAIL, EVERY, Probe, histogram, host_shortcuts
from tview.store.schema import CHANNEL, HIST, Column


class ActivationContext:
    """One module output and the reductions probes share (each computed once, on demand).

    `full` is the whole output; `x` is what sampled statistics look at: the first `sample_examples`
    examples of the batch (a view, no copy), or the whole output. Plain attributes as memos (no
    `functools.cached_property`: its lock breaks a torch.compile graph); reductions accumulate in float32
    whatever the output's dtype (bf16, fp16).
    """

    def __init__(self, x: torch.Tensor, sample_examples: int | None = None):
        self.full = x.detach()
        sampled = sample_examples and self.full.dim() >= 2 and self.full.shape[0] > sample_examples
        self.x = self.full[:sample_examples] if sampled else self.full
        self.numel = self.x.numel()
        self.full_numel = self.full.numel()
        self.channel_dims = (0,) + tuple(range(2, self.full.dim())) if self.full.dim() >= 2 else None
        self.host = host_shortcuts(self.full)
        self._memo: dict = {}

    def _once(self, key: str, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def channel_sum(self) -> torch.Tensor:
        """Per output channel sums over the whole output."""
        return self._once("channel_sum", lambda: self.full.sum(dim=self.channel_dims, dtype=torch.float32))

    def total(self) -> torch.Tensor:
        """Sum of the whole output (from the channel sums when a probe needed those anyway: one pass less)."""
        if "channel_sum" in self._memo:
            return self._once("total", lambda: self.channel_sum().sum())
        return self._once("total", lambda: self.full.sum(dtype=torch.float32))

    def sample_total(self) -> torch.Tensor:
        return self.total() if self.x is self.full else self.x.sum(dtype=torch.float32)

    def channel_nonzero(self):
        """Per output channel counts of values that are not exactly zero (NaN and Inf included), over the whole
        output; the host subtracts them from the count (one device op less). On the CPU numpy counts the
        non-zeros of each (example, channel) slab: 3x faster than torch's sums."""
        return self._once("channel_nonzero", self._channel_nonzero)

    def _channel_nonzero(self):
        x = self.full
        if self.host and x.is_contiguous() and x.dtype == torch.float32 and x.numel():
            a = x.numpy().reshape(x.shape[0], x.shape[1], -1)
            return np.not_equal(a, 0).sum(axis=2, dtype=np.int64).sum(axis=0).astype(np.float64)
        return torch.count_nonzero(x, dim=self.channel_dims)

    def nonzero(self):
        """Count of values not exactly zero over the whole output (per channel where it has channels)."""
        return self.channel_nonzero() if self.channel_dims else torch.count_nonzero(self.full)

    def nonfinite(self) -> tuple:
        """(NaN count, Inf count) over the whole output. On the CPU they are counted only when the sum is
        not finite (a finite sum proves there are none), which saves two passes on healthy tensors; on a
        GPU, or under torch.compile, always (branching on a device value would make the host wait)."""
        if self.host and bool(torch.isfinite(self.total())):
            return 0, 0  # plain numbers: no transfer
        return torch.isnan(self.full).sum(), torch.isinf(self.full).sum()


class ActivationProbe(Probe):
    """Base: `compute` returns partial statistics (tensors, or plain numbers known without looking at
    the data, such as the element count "n"); `merge` says how partials of calls combine ("sum",
    "min", "max", or "total": the sum of all their elements, whatever their shapes); a part not
    named there is summed. `finalize` returns {column: value} for one layer (plus sample_n and
    total_n for a sampled probe)."""

    reads = "activation"
    merge: dict[str, str] = {}

    def compute(self, ctx: ActivationContext) -> dict:
        raise NotImplementedError

    def finalize(self, parts: dict[str, np.ndarray]) -> dict:
        raise NotImplementedError


class ActMoments(ActivationProbe):
    """Mean, std, min and max of a module's output (over the first examples of the batch in presets
    that sample: the table keeps how many values of how many)."""

    table = "act"
    columns = (Column("act_mean"), Column("act_std"), Column("act_min"), Column("act_max"))
    sampled = True
    merge = {"sums": "sum", "min": "min", "max": "max"}

    @classmethod
    def cadence_for(cls, preset):
        return (EVERY if preset.activations_every_step else DETAIL) if preset.activations else None

    def compute(self, ctx):
        x = ctx.x
        lo, hi = torch.aminmax(x) if ctx.numel else (x.new_zeros(()), x.new_zeros(()))
        sumsq = torch.linalg.vector_norm(x, dtype=torch.float32).square()
        sums = torch.stack([ctx.sample_total(), sumsq])  # packed: fewer tensors to move
        return {"sums": sums, "min": lo, "max": hi, "n": float(ctx.numel), "of": float(ctx.full_numel)}

    def finalize(self, p):
        n = p["n"]
        total, sumsq = p["sums"]
        mean = total / n
        var = (sumsq - total * mean) / max(n - 1, 1)
        return {"act_mean": mean, "act_std": np.sqrt(np.maximum(var, 0)), "act_min": p["min"],
                "act_max": p["max"], "sample_n": n, "total_n": p["of"]}


class ActCounts(ActivationProbe):
    """Sentinels, on every recorded step whatever the preset: NaN and Inf counts and the fraction of exact
    zeros over the whole output. They date where a NaN is born (the first layer in forward order)."""

    table = "act_counts"
    columns = (Column("act_zero_frac"), Column("act_nan", nonfinite=True), Column("act_inf", nonfinite=True))
    merge = {"nonzero": "total"}  # per-channel counts: the host adds them up (one device op less)

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.sentinels else None

    def compute(self, ctx):
        nan, inf = ctx.nonfinite()
        return {"n": float(ctx.full_numel), "nonzero": ctx.nonzero(), "nan": nan, "inf": inf}

    def finalize(self, p):
        zeros = p["n"] - np.sum(p["nonzero"])
        return {"act_zero_frac": zeros / max(p["n"], 1), "act_nan": p["nan"], "act_inf": p["inf"]}


class ActChannelZeros(ActivationProbe):
    """Sentinel per output channel (dim 1), every recorded step: the fraction of exact zeros over the whole
    output (the same counts as act_counts, shared): a channel that dies is dated to its onset."""

    table = "act_channel_zeros"
    columns = (Column("act_channel_zero_frac", CHANNEL),)
    merge = {"nonzero": "sum"}

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.sentinels else None

    def compute(self, ctx):
        if ctx.channel_dims is None:
            return {}
        return {"n": float(ctx.full_numel // max(ctx.full.shape[1], 1)), "nonzero": ctx.channel_nonzero()}

    def finalize(self, p):
        if "n" not in p or p["nonzero"] is None:
            return {}  # not measured: no channels, or calls of several widths
        return {"act_channel_zero_frac": (p["n"] - np.asarray(p["nonzero"], dtype=np.float64)) / p["n"]}


class ActChannelStats(ActivationProbe):
    """Per output channel (dim 1) mean over the whole output."""

    table = "act_channel"
    columns = (Column("act_channel_mean", CHANNEL),)
    merge = {"sum": "sum"}

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.activations and preset.channels else None

    def compute(self, ctx):
        if ctx.channel_dims is None:
            return {}
        per_channel = ctx.full_numel // max(ctx.full.shape[1], 1)
        return {"n": float(per_channel), "sum": ctx.channel_sum()}

    def finalize(self, p):
        if "n" not in p or p["sum"] is None:
            return {}  # not measured: no channels, or calls of several widths
        return {"act_channel_mean": p["sum"] / p["n"]}


class ActHistogram(ActivationProbe):
    """Signed-log histogram of a module's output, or of a sample of about `sample` values: 64 runs
    of consecutive values spread evenly over the tensor (runs, not single values at a stride, so
    the sample reads ~1k cache lines rather than one per value: 2-3x cheaper on a CNN's outputs)."""

    RUNS = 64
    table = "act_hist"
    columns = (Column("act", HIST, "uint32"),)
    sampled = True
    merge = {"counts": "sum"}

    @classmethod
    def create(cls, preset, setting):
        return cls(DETAIL, preset.act_hist_sample) if preset.activations and preset.histograms else None

    def __init__(self, cadence: str = EVERY, sample: int | None = None):
        super().__init__(cadence)
        self.sample = sample

    def compute(self, ctx):
        flat = ctx.full.reshape(-1)
        n = flat.numel()
        if self.sample and n > self.sample:
            run = max(self.sample // self.RUNS, 1)
            flat = flat.as_strided((self.RUNS, run), ((n - run) // (self.RUNS - 1), 1))  # from its own offset
        return {"counts": histogram(flat), "n": float(flat.numel()), "of": float(n)}

    def finalize(self, p):
        return {"act": p["counts"], "sample_n": p["n"], "total_n": p["of"]}



def merge_partials(probe: ActivationProbe, calls: list[dict]) -> dict:
    """Combine the partials of several calls of one module in one step (host side, numpy)."""
    calls = [c for c in calls if c]
    if not calls:
        return {}
    out = dict(calls[0])
    for c in calls[1:]:
        for key in out:
            if key in c:
                out[key] = _merged(probe.merge.get(key, "sum"), out[key], c[key])
    return out


def _merged(rule: str, a, b):
    if rule == "total":
        return np.sum(a) + np.sum(b)
    if a is None or b is None or np.shape(a) != np.shape(b):
        return None  # e.g. a shared ReLU on outputs of several widths: no per-channel answer
    if rule == "min":
        return np.minimum(a, b)
    if rule == "max":
        return np.maximum(a, b)
    return a + b
