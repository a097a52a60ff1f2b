"""Parameter probes: statistics of every layer's parameters and gradients at once, after optimizer.step().

`compute(step)` gets a ParamStep (flat weights, gradients, ... gathered once) and returns per-layer
partials (tensors left on a GPU, numpy arrays on the CPU) or None when it measures nothing at this
step; a "measured" entry ([layers] bools, host side) says which layers it measured, when not all.
`finalize(parts, ctx)` turns them, on the writer thread, into {column: [layers] values} (a CHANNEL
column: a list with one [C] array or None per layer).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from tview.hooks.params import ParamContext, ParamStep
from tview.hooks.probes import DETAIL, EVERY, Probe
from tview.store.schema import CHANNEL, HIST, VECTOR, Column


class ParamProbe(Probe):
    """Base of the parameter probes; `setup(ctx)` runs once, when the Recorder is made."""

    def setup(self, ctx: ParamContext) -> None:
        pass

    def compute(self, step: ParamStep) -> dict | None:
        raise NotImplementedError

    def finalize(self, parts: dict, ctx: ParamContext) -> dict:
        raise NotImplementedError


class GradStats(ParamProbe):
    """Per layer gradient norm, mean, std, largest magnitude, NaN and Inf counts (layers with a gradient)."""

    table = "grad"
    reads = "gradient"
    columns = (Column("grad_norm"), Column("grad_mean"), Column("grad_std"), Column("grad_max_abs"),
               Column("grad_nan", nonfinite=True), Column("grad_inf", nonfinite=True))

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.grads else None

    def compute(self, step):
        if not step.has_grad.any():
            return None
        ctx, grads = step.ctx, step.grads
        sq = step.grad_sq_sums
        return {"sum": ctx.sums(grads), "sq": sq, "max_abs": ctx.max_abs(grads),
                "nonfinite": ctx.nonfinite(grads, sq.sum()), "measured": step.has_grad}

    def finalize(self, p, ctx):
        counts = ctx.counts
        with np.errstate(invalid="ignore"):  # Inf gradients: Inf - Inf is NaN, and that is the answer
            mean = p["sum"] / counts
            var = (p["sq"] - p["sum"] * mean) / np.maximum(counts - 1, 1)
        return {"grad_norm": np.sqrt(p["sq"]), "grad_mean": mean, "grad_std": np.sqrt(np.maximum(var, 0)),
                "grad_max_abs": p["max_abs"], "grad_nan": p["nonfinite"][0], "grad_inf": p["nonfinite"][1]}


class GradChannelNorm(ParamProbe):
    """Per output channel gradient norm of Conv and Linear layers (weight and bias of that channel): a
    filter whose gradient stays zero has stopped learning."""

    table = "grad_channel"
    reads = "gradient"
    columns = (Column("grad_channel_norm", CHANNEL),)

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.grads else None

    def compute(self, step):
        if not step.has_grad.any() or not any(step.ctx.channel_widths):
            return None
        widths = np.asarray(step.ctx.channel_widths)
        return {"sq": step.ctx.channel_sums(step.grad_squares), "measured": step.has_grad & (widths > 0)}

    def finalize(self, p, ctx):
        norms = np.sqrt(p["sq"])
        ends = np.cumsum(ctx.channel_widths)
        return {"grad_channel_norm": [norms[e - w:e] if w else None for e, w in zip(ends, ctx.channel_widths)]}


class LocalGradNorm(ParamProbe):
    """Under DDP, this rank's own gradient norm per layer, before the all-reduce averages it."""

    table = "local_grad"
    reads = "local_gradient"
    columns = (Column("local_grad_norm"),)

    @classmethod
    def create(cls, preset, setting):
        return cls(EVERY) if preset.grads and setting["distributed"] else None

    def compute(self, step):
        return None if step.local is None else {"sq": step.local}

    def finalize(self, p, ctx):
        sq = np.asarray(p["sq"], dtype=np.float64)
        ends = np.cumsum([len(ps) for ps in ctx.per_layer])
        per_layer = [sq[e - len(ps):e] for e, ps in zip(ends, ctx.per_layer)]
        return {"local_grad_norm": np.array([np.sqrt(np.nansum(v)) if np.isfinite(v).any() or np.isinf(v).any()
                                             else np.nan for v in per_layer])}


class WeightStats(ParamProbe):
    """Per layer weight norm and sum: together a fingerprint that replicas must share (the same weights
    give the same sums to the last bit: the reduction is deterministic; stored in float64)."""

    table = "weight"
    reads = "weight"
    columns = (Column("weight_norm"), Column("weight_sum", dtype="float64"))

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.weights else None

    def compute(self, step):
        return {"sq": step.weight_sq_sums, "sum": step.ctx.sums(step.weights)}

    def finalize(self, p, ctx):
        return {"weight_norm": np.sqrt(p["sq"]), "weight_sum": p["sum"]}


class UpdateRatio(ParamProbe):
    """|W - W at the previous recorded step| / |W| per layer (from the second recorded step on)."""

    table = "update"
    reads = "weight"
    columns = (Column("update_ratio"),)

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.weights else None

    def __init__(self, cadence: str = EVERY):
        super().__init__(cadence)
        self.previous: torch.Tensor | None = None

    def compute(self, step):
        weights, previous = step.weights, self.previous
        self.previous = weights  # ctx.weights() fills the other buffer next time: this one stays
        if previous is None:
            return None
        return {"dsq": step.ctx.sq_dist(weights, previous), "sq": step.weight_sq_sums}

    def finalize(self, p, ctx):
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"update_ratio": np.sqrt(p["dsq"]) / np.sqrt(p["sq"])}


class InitDistance(ParamProbe):
    """Distance from initialization per layer, |W - W0| / |W0|, W0 being the weights when the
    Recorder was made (Cockpit's "distance" quantity)."""

    table = "init_distance"
    reads = "weight"
    columns = (Column("init_distance"),)

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.weights else None

    def setup(self, ctx):
        self.init = ctx.gather("init", ctx.params)  # a buffer of its own: kept for the whole run
        sq = ctx.sq_sums(self.init)
        self.init_sq = np.asarray(sq.cpu() if isinstance(sq, torch.Tensor) else sq, dtype=np.float64)

    def compute(self, step):
        return {"dsq": step.ctx.sq_dist(step.weights, self.init)}

    def finalize(self, p, ctx):
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"init_distance": np.sqrt(p["dsq"]) / np.sqrt(self.init_sq)}


class GradHistogram(ParamProbe):
    """Signed-log histogram of every layer's gradient values."""

    table = "grad_hist"
    reads = "gradient"
    columns = (Column("grad", HIST, "uint32"),)

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.histograms and preset.grads else None

    def compute(self, step):
        if not step.has_grad.any():
            return None
        return {"counts": step.ctx.histogram(step.grads), "measured": step.has_grad}

    def finalize(self, p, ctx):
        return {"grad": p["counts"]}


class WeightHistogram(ParamProbe):
    """Signed-log histogram of every layer's weight values."""

    table = "weight_hist"
    reads = "weight"
    columns = (Column("weight", HIST, "uint32"),)

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.histograms and preset.weights else None

    def compute(self, step):
        return {"counts": step.ctx.histogram(step.weights)}

    def finalize(self, p, ctx):
        return {"weight": p["counts"]}


class Trajectory(ParamProbe):
    """Each layer's parameters projected on `dims` fixed random unit directions: its path through
    training. Directions come from a generator seeded by (seed, layer name): every rank and every
    resumed run uses the same ones; they live on the parameters' device."""

    table = "trajectory"
    reads = "weight"

    @classmethod
    def create(cls, preset, setting):
        if not preset.trajectory:
            return None
        return cls(DETAIL, setting["layer_names"], setting["trajectory_dims"], setting["seed"])

    def __init__(self, cadence: str = EVERY, layer_names: list[str] | None = None, dims: int = 3, seed: int = 0):
        super().__init__(cadence)
        self.layer_names, self.dims, self.seed = list(layer_names or []), dims, seed
        self.columns = (Column("trajectory", VECTOR, width=dims),)

    def setup(self, ctx):
        self.directions = []  # per layer, [dims, its parameter count]
        for name, size in zip(self.layer_names, ctx.sizes):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
            d = torch.randn(self.dims, size, generator=g)
            self.directions.append((d / d.norm(dim=1, keepdim=True).clamp(min=1e-12)).to(ctx.device))

    def compute(self, step):
        return {"coords": torch.stack([d @ w for d, w in zip(self.directions, step.ctx.split(step.weights))])}

    def finalize(self, p, ctx):
        return {"trajectory": p["coords"]}

