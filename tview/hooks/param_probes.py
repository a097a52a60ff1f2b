"""Parameter probes: statistics of every layer's parameters and gradients at once, after optimizer.step().

`compute(step)` gets a ParamStep (per-parameter-tensor reductions computed once and shared) and returns
partials per parameter tensor (tensors left on the device: no host sync) or None when it measures nothing
at this step; a "measured" entry ([layers] bools, host side) says which layers it measured, when not all.
`finalize(parts, ctx)` sums them per layer and turns them, on the writer thread, into {column: [layers]
values} (a CHANNEL column: a list with one [C] array or None per layer).

Under FSDP2 each rank reduces the shards it holds and the partials are summed (maxed) over the ranks, so
norms, means and histograms are the whole tensors'; per-channel gradient norms and the trajectory are left
out there (a rank does not hold whole channels).
"""

from __future__ import annotations

import numpy as np
import torch

from tview.hooks import params as P
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
    """Per layer gradient norm, mean, std, largest magnitude (layers with a gradient); grad_nan 1 where the layer's
    gradient holds a NaN, grad_inf 1 where it holds an Inf (and no NaN), else 0."""

    table = "grad"
    reads = "gradient"
    columns = (Column("grad_norm"), Column("grad_mean"), Column("grad_std"), Column("grad_max_abs"),
               Column("grad_nan", nonfinite=True), Column("grad_inf", nonfinite=True))

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.grads else None

    def setup(self, ctx):
        ctx.wants_grads = True

    def compute(self, step):
        if not step.has_grad.any():
            return None
        return {**step.grad_stats, "count": step.grad_count, "measured": step.has_grad}

    def finalize(self, p, ctx):
        p = {**p, **p["moments"]} if "moments" in p else p  # the device path's per-block moments, made per tensor
        total = ctx.per_layer_sum
        sq_t, peak_t = np.asarray(p["sq"], dtype=np.float64), np.asarray(p["max_abs"], dtype=np.float64)
        nan_t = np.isnan(sq_t) | np.isnan(peak_t)  # a NaN makes the sum of squares NaN
        inf_t = np.isinf(peak_t) & ~nan_t  # an Inf makes the largest magnitude Inf (not looked for beside a NaN)
        sq, s, counts = total(sq_t), total(ctx.tensor_sums(p["sum"])), p["count"]
        with np.errstate(invalid="ignore", divide="ignore"):  # Inf gradients: Inf - Inf is NaN, the answer
            mean = s / counts
            var = (sq - s * mean) / np.maximum(counts - 1, 1)
        nan, inf = ctx.present(nan_t).astype(np.float64), ctx.present(inf_t).astype(np.float64)
        max_abs = np.where(nan > 0, np.nan, ctx.per_layer_max(peak_t))
        return {"grad_norm": np.sqrt(sq), "grad_mean": mean, "grad_std": np.sqrt(np.maximum(var, 0)),
                "grad_max_abs": max_abs, "grad_nan": nan, "grad_inf": inf}


class GradChannelNorm(ParamProbe):
    """Per output channel gradient norm of Conv, ConvTranspose and Linear layers (weight and bias of that
    channel): a filter whose gradient stays zero has stopped learning."""

    table = "grad_channel"
    reads = "gradient"
    columns = (Column("grad_channel_norm", CHANNEL),)

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.grads else None

    def setup(self, ctx):
        if ctx.total_channels:
            ctx.use_scratch(self)

    def compute(self, step):
        with step.scratch(self):
            if not step.has_grad.any() or not step.ctx.total_channels:
                return None
            sq = step.ctx.channel_sq(step.grads)
        widths = np.asarray(step.ctx.channel_widths)
        return {"sq": sq, "measured": step.has_grad & (widths > 0)}

    def finalize(self, p, ctx):
        norms = np.sqrt(ctx.channel_values(p["sq"]))
        ends = np.cumsum(ctx.channel_widths)
        return {"grad_channel_norm": [norms[e - w:e] if w else None for e, w in zip(ends, ctx.channel_widths)]}


class LocalGradNorm(ParamProbe):
    """Under DDP, this rank's own gradient norm per layer, before the all-reduce averages it."""

    table = "local_grad"
    reads = "local_gradient"
    columns = (Column("local_grad_norm", nonfinite_value=True),)

    @classmethod
    def create(cls, preset, setting):
        return cls(EVERY) if preset.grads and setting["distributed"] else None

    def compute(self, step):
        local = step.local
        if local is None:
            return None
        return {"sq": local[0], "measured": local[1]}

    def finalize(self, p, ctx):
        sq = np.asarray(p["sq"], dtype=np.float64)  # NaN: a tensor without a local gradient (frozen), or a NaN one
        none = np.isnan(sq) & ~np.array([t.requires_grad for t in ctx.params], dtype=bool)
        return {"local_grad_norm": np.sqrt(ctx.per_layer_sum(np.where(none, 0.0, sq)))}


class WeightStats(ParamProbe):
    """Per layer weight norm and sum: together a fingerprint that replicas must share (the same weights
    give the same sums to the last bit: the reduction is deterministic, accumulated in float64)."""

    table = "weight"
    reads = "weight"
    columns = (Column("weight_norm"), Column("weight_sum", dtype="float64", nonfinite_value=True))

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.weights else None

    def setup(self, ctx):
        ctx.keeps_weights = True

    def compute(self, step):
        w = step.weight_stats
        return {"sq": w["sq"], "sum": w["sum"]}

    def finalize(self, p, ctx):
        return {"weight_norm": np.sqrt(ctx.per_layer_sum(p["sq"])),
                "weight_sum": ctx.per_layer_sum(ctx.tensor_sums(p["sum"]))}


class UpdateRatio(ParamProbe):
    """|W - W at the previous recorded step| / |W| per layer (from the second recorded step on)."""

    table = "update"
    reads = "weight"
    columns = (Column("update_ratio"),)

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.weights else None

    def setup(self, ctx):
        ctx.keeps_weights = True

    def compute(self, step):
        w = step.weight_stats
        if "dsq" not in w:  # nothing gathered before: nothing to compare with
            return None
        return {"dsq": w["dsq"], "sq": w["sq"]}

    def finalize(self, p, ctx):
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"update_ratio": np.sqrt(ctx.per_layer_sum(p["dsq"]) / ctx.per_layer_sum(p["sq"]))}


class InitDistance(ParamProbe):
    """Distance from initialization per layer, |W - W0| / |W0|, W0 being the weights the run started from
    (Cockpit's "distance" quantity). W0 is not held in memory: it is read back, in float32, from the file the
    Recorder keeps beside the shard (see OriginWeights)."""

    table = "init_distance"
    reads = "weight"
    columns = (Column("init_distance"),)

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.weights else None

    def setup(self, ctx):
        ctx.keeps_weights = True
        ctx.use_scratch(self)
        self.origin = P.OriginWeights(ctx, ctx.origin_path)
        self.init_norm = np.sqrt(ctx.per_layer_sum(self.origin.sq_sums()))

    def compute(self, step):
        with step.scratch(self):
            return {"dsq": P.origin_distance_sq(step.ctx, self.origin, step.weights)}

    def finalize(self, p, ctx):
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"init_distance": np.sqrt(ctx.per_layer_sum(p["dsq"])) / self.init_norm}


class GradHistogram(ParamProbe):
    """Signed-log histogram of every layer's gradient values."""

    table = "grad_hist"
    reads = "gradient"
    columns = (Column("grad", HIST, "uint32"),)

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.histograms and preset.grads else None

    def setup(self, ctx):
        ctx.use_scratch(self)

    def compute(self, step):
        with step.scratch(self):
            if not step.has_grad.any():
                return None
            counts = step.ctx.combine(step.ctx.histogram(step.grads, step.hist_table(0)))
        return {"counts": counts, "missing": step.missing_numel, "measured": step.has_grad}

    def finalize(self, p, ctx):
        return {"grad": ctx.hist_rows(p["counts"], p["missing"])}


class WeightHistogram(ParamProbe):
    """Signed-log histogram of every layer's weight values."""

    table = "weight_hist"
    reads = "weight"
    columns = (Column("weight", HIST, "uint32"),)

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.histograms and preset.weights else None

    def setup(self, ctx):
        ctx.use_scratch(self)

    def compute(self, step):
        with step.scratch(self):
            counts = step.ctx.combine(step.ctx.histogram(step.weights, step.hist_table(1)))
        return {"counts": counts}

    def finalize(self, p, ctx):
        return {"weight": ctx.hist_rows(p["counts"])}


class Trajectory(ParamProbe):
    """Each layer's parameters projected on `dims` fixed random unit directions: its path through training.
    Direction d is, in each block of BLOCK elements of the flat layout, one fixed N(0, 1) pattern times a random
    sign per block (see params.direction_parts): every rank and every resumed run of the same model draws the
    same, and a recorded step takes every projection in one matmul over the weight copy. Left out under FSDP2."""

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
        self.ctx = ctx
        self.pattern, self.signs = P.direction_parts(self.seed, self.dims, ctx.nblocks)
        self.norms = P.direction_norms(ctx, self.pattern)  # [layers, dims]
        self.on_device = torch.from_numpy(self.pattern).to(ctx.device)
        if not ctx.is_sharded:
            ctx.use_scratch(self)

    @property
    def directions(self) -> P.Directions:
        """Per layer, its [dims, parameters] unit directions (made on each access)."""
        return P.Directions(self.ctx, self.pattern, self.signs, self.norms)

    def compute(self, step):
        if step.ctx.is_sharded:
            return None
        with step.scratch(self):
            return {"dots": P.projections(step.ctx, self.on_device, step.weights)}

    def finalize(self, p, ctx):
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"trajectory": ctx.per_layer_sum(P.projected(ctx, p["dots"], self.signs)) / self.norms}
