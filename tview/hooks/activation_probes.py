"""Activation probes: statistics of the recorded layers' outputs.

tview's own probes read every layer's output at once where the forward pass ends (an ActivationBatch,
tview/hooks/activation_batch.py: a sample of whole examples from each output, NaN and Inf over every
value); a probe of one's own may instead read one output in its layer's forward hook (an ActivationContext).
Each returns *partial* statistics (sums, counts, extremes) that merge across calls of a module in one
step (a module used twice, gradient accumulation); the writer thread merges and finalizes them, and a
sampled probe's table records how many values of how many it read (sample_n of total_n).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from tview.hooks.probes import DETAIL, EVERY, Probe, host_shortcuts
from tview.store.schema import CHANNEL, HIST, HIST_BINS, Column


class ActivationContext:
    """One module output, for a probe that reads outputs one at a time in the forward hook: `full` (detached),
    `numel`, `channel_dims` (the dims to reduce for per-channel values, None without channels) and `host`
    (True where numpy may stand in for torch ops: a CPU tensor outside torch.compile)."""

    def __init__(self, x: torch.Tensor):
        self.full = x.detach()
        self.numel = self.full.numel()
        self.channel_dims = (0,) + tuple(range(2, self.full.dim())) if self.full.dim() >= 2 else None
        self.host = host_shortcuts(self.full)


class ActivationProbe(Probe):
    """Base: `compute` returns partial statistics (tensors, or plain numbers known without looking at
    the data, such as the element count "n"); `merge` says how partials of calls combine ("sum",
    "min", "max", "total": the sum of all their elements, whatever their shapes, or "lowest"/"highest":
    the extreme of all their elements); a part not named there is summed. `finalize` returns {column: value}
    for one layer (plus sample_n and total_n for a sampled probe).

    A probe sees one output in its layer's forward hook (`compute(ctx)`, an ActivationContext), or, where
    it sets `batched = True`, the outputs of every layer at once at the end of the forward pass
    (`compute_batch(batch)`, an ActivationBatch): tview's own do. A batch's partials cover every output:
    the parts named in `row_parts` hold one value per row (channel) of every output, the others one entry per
    output, and "measured" (optional) says which outputs have a value; `output_parts` takes one output's."""

    reads = "activation"
    merge: dict[str, str] = {}
    batched = False
    row_parts: tuple[str, ...] = ()
    batch_stats: tuple[str, ...] = ()  # what compute_batch reads of the batch (ActivationBatch's `wants`)

    def compute(self, ctx: ActivationContext) -> dict:
        raise NotImplementedError

    def compute_batch(self, batch) -> dict:
        raise NotImplementedError

    def finalize(self, parts: dict[str, np.ndarray]) -> dict:
        raise NotImplementedError

    # Optional, batched probes: finalize every output of a batch at once (the writer's per-layer Python is most of
    # its time on a CPU step): {column: one value per output (CHANNEL: a list of arrays)}, sample_n and total_n
    # per output, and optionally "measured" [outputs] bool. Used where each output of the batch is a different layer.
    finalize_outputs = None


class ActMoments(ActivationProbe):
    """Mean, std, min and max of a module's output, over the sample of examples the sentinels read (the
    table keeps how many values of how many)."""

    table = "act"
    columns = (Column("act_mean"), Column("act_std"), Column("act_min"), Column("act_max"))
    sampled = True
    batched = True
    merge = {"sum": "total", "sumsq": "total", "min": "lowest", "max": "highest"}

    @classmethod
    def cadence_for(cls, preset):
        return (EVERY if preset.activations_every_step else DETAIL) if preset.activations else None

    row_parts = ("sum", "sumsq", "min", "max")
    batch_stats = ("sums", "sumsq", "amin", "amax")

    def compute_batch(self, b):
        return {"sum": b.row_sums(), "sumsq": b.row_sumsq(), "min": b.row_extreme("amin"),
                "max": b.row_extreme("amax"), "n": b.sampled(), "of": b.sizes()}

    def finalize(self, p):
        n, total, sumsq = p["n"], np.sum(p["sum"]), np.sum(p["sumsq"])
        mean = total / max(n, 1)
        var = (sumsq - total * mean) / max(n - 1, 1)
        return {"act_mean": mean, "act_std": np.sqrt(np.maximum(var, 0)), "act_min": np.min(p["min"]),
                "act_max": np.max(p["max"]), "sample_n": n, "total_n": p["of"]}


class ActCounts(ActivationProbe):
    """Sentinels, on every recorded step whatever the preset: whether a module's output holds a NaN or an Inf
    (act_nan, act_inf: 1 or 0, over the whole output), and the fraction of exact zeros in the sample. They
    date where a NaN is born (the first layer in forward order)."""

    table = "act_counts"
    columns = (Column("act_zero_frac"), Column("act_nan", nonfinite=True), Column("act_inf", nonfinite=True))
    sampled = True
    batched = True
    merge = {"zeros": "total"}  # norms add up: a NaN or an Inf in any call stays

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.sentinels else None

    row_parts = ("zeros",)
    batch_stats = ("zeros",)

    def compute_batch(self, b):
        return {"zeros": b.row_zeros(), "norm": b.norms(), "n": b.sampled(), "of": b.sizes()}

    def finalize(self, p):
        norm = float(np.sum(p["norm"]))
        return {"act_zero_frac": np.sum(p["zeros"]) / max(p["n"], 1), "act_nan": float(math.isnan(norm)),
                "act_inf": float(math.isinf(norm)), "sample_n": p["n"], "total_n": p["of"]}

    def finalize_outputs(self, p, row_start):
        n, norm = np.asarray(p["n"], dtype=np.float64), np.asarray(p["norm"], dtype=np.float64).reshape(-1)
        zeros = np.add.reduceat(np.asarray(p["zeros"], dtype=np.float64), row_start[:-1])
        return {"act_zero_frac": zeros / np.maximum(n, 1), "act_nan": np.isnan(norm).astype(np.float64),
                "act_inf": np.isinf(norm).astype(np.float64), "sample_n": n, "total_n": np.asarray(p["of"])}


class ActChannelZeros(ActivationProbe):
    """Sentinel per output channel (dim 1), every recorded step: the fraction of exact zeros in the sample
    (the same counts as act_counts, shared): a channel that dies is dated to its onset."""

    table = "act_channel_zeros"
    columns = (Column("act_channel_zero_frac", CHANNEL),)
    sampled = True
    batched = True
    merge = {"zeros": "sum", "n": "sum", "of": "sum"}

    @classmethod
    def cadence_for(cls, preset):
        return EVERY if preset.sentinels else None

    row_parts = ("zeros",)
    batch_stats = ("zeros",)

    def compute_batch(self, b):
        return {"zeros": b.row_zeros(), "n": b.per_row(), "of": b.sizes(), "measured": b.has_channels()}

    def finalize(self, p):
        if "n" not in p or p["zeros"] is None:
            return {}  # not measured: no channels, or calls of several widths
        frac = np.asarray(p["zeros"], dtype=np.float64) / p["n"]
        return {"act_channel_zero_frac": frac, "sample_n": p["n"] * len(frac), "total_n": p["of"]}

    def finalize_outputs(self, p, row_start):
        zeros, n = np.asarray(p["zeros"], dtype=np.float64), np.asarray(p["n"], dtype=np.float64)
        widths = np.diff(row_start)
        return {"act_channel_zero_frac": [zeros[a:b] / n[k] for k, (a, b) in enumerate(zip(row_start, row_start[1:]))],
                "sample_n": n * widths, "total_n": np.asarray(p["of"]), "measured": np.asarray(p["measured"], bool)}


class ActChannelStats(ActivationProbe):
    """Per output channel (dim 1) mean over the sample."""

    table = "act_channel"
    columns = (Column("act_channel_mean", CHANNEL),)
    sampled = True
    batched = True
    merge = {"sum": "sum", "n": "sum", "of": "sum"}

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.activations and preset.channels else None

    row_parts = ("sum",)
    batch_stats = ("sums",)

    def compute_batch(self, b):
        return {"sum": b.row_sums(), "n": b.per_row(), "of": b.sizes(), "measured": b.has_channels()}

    def finalize(self, p):
        if "n" not in p or p["sum"] is None:
            return {}  # not measured: no channels, or calls of several widths
        mean = np.asarray(p["sum"], dtype=np.float64) / p["n"]
        return {"act_channel_mean": mean, "sample_n": p["n"] * len(mean), "total_n": p["of"]}


class ActHistogram(ActivationProbe):
    """Signed-log histogram of a module's output, over the sample of examples the sentinels read."""

    table = "act_hist"
    columns = (Column("act", HIST, "uint32"),)
    sampled = True
    batched = True
    merge = {"counts": "sum"}

    @classmethod
    def cadence_for(cls, preset):
        return DETAIL if preset.activations and preset.histograms else None

    batch_stats = ("hist",)

    def compute_batch(self, b):
        return {"counts": b.histograms(), "n": b.sampled(), "of": b.sizes()}

    def finalize(self, p):
        return {"act": np.asarray(p["counts"])[..., :HIST_BINS], "sample_n": p["n"], "total_n": p["of"]}


def outputs_finalizer(probe: ActivationProbe):
    """The probe's finalize_outputs, or None: absent, or a subclass changed finalize without it."""
    owner = {name: next((c for c in type(probe).__mro__ if name in c.__dict__), None)
             for name in ("finalize", "finalize_outputs")}
    defined = owner["finalize_outputs"] is not None and probe.finalize_outputs is not None
    return probe.finalize_outputs if defined and issubclass(owner["finalize_outputs"], owner["finalize"]) else None


def output_parts(probe: ActivationProbe, parts: dict, row_start: list[int], k: int) -> dict:
    """Output k's partials out of a batch's (host side, numpy); {} where it has none."""
    if not parts.get("measured", (True,) * (k + 1))[k]:
        return {}
    return {key: (v[row_start[k]:row_start[k + 1]] if key in probe.row_parts else v[k])
            for key, v in parts.items() if key != "measured"}


def merge_partials(probe: ActivationProbe, calls: list[dict]) -> dict:
    """Combine the partials of several calls of one module in one step (host side, numpy)."""
    calls = [c for c in calls if c]
    if len(calls) < 2:
        return dict(calls[0]) if calls else {}
    return {key: _merged_all(probe.merge.get(key, "sum"), [c[key] for c in calls if key in c]) for key in calls[0]}


def _merged_all(rule: str, values: list):
    """The values of one key over a module's calls, merged by `rule` (in call order, as _merged pairs them)."""
    if rule in ("sum", "min", "max") and all(isinstance(v, np.ndarray) for v in values) \
            and len({v.shape for v in values}) == 1:
        return {"sum": np.add, "min": np.minimum, "max": np.maximum}[rule].reduce(values)
    out = values[0]
    for v in values[1:]:
        out = _merged(rule, out, v)
    return out


def _merged(rule: str, a, b):
    if rule == "total":
        return np.sum(a) + np.sum(b)
    if rule in ("lowest", "highest"):
        pick = np.min if rule == "lowest" else np.max
        return pick([pick(a), pick(b)]) if np.size(a) and np.size(b) else (a if np.size(a) else b)
    if a is None or b is None or np.shape(a) != np.shape(b):
        return None  # e.g. a shared ReLU on outputs of several widths: no per-channel answer
    if rule == "min":
        return np.minimum(a, b)
    if rule == "max":
        return np.maximum(a, b)
    return a + b


_UFUNC = {"sum": np.add, "total": np.add, "min": np.minimum, "lowest": np.minimum, "max": np.maximum,
          "highest": np.maximum}


class MergePlan:
    """How a batch whose layers made several outputs (a module called several times: a ReLU shared by a block)
    is finalized at once: the calls of a layer whose outputs all have the same rows are merged into one output,
    row by row (equal widths make every merge rule a row-wise one: "total" and "sum" add, "lowest" and "min" take
    the least); each layer's merged output stands where its first call stood. The outputs of a layer whose calls
    differ in width are `leftover` (merged per layer, as merge_partials does)."""

    def __init__(self, layers: tuple[int, ...], row_start: tuple[int, ...]):
        widths = np.diff(row_start)
        calls: dict[int, list[int]] = {}
        for k, layer in enumerate(layers):
            calls.setdefault(layer, []).append(k)
        same = {layer: len({int(widths[k]) for k in ks}) == 1 for layer, ks in calls.items()}
        groups = [ks for layer, ks in calls.items() if same[layer]]
        self.leftover = np.array([not same[layer] for layer in layers])
        self.merges = any(len(ks) > 1 for ks in groups)
        self.layers = [layers[ks[0]] for ks in groups]
        self.row_start = [0, *np.cumsum([widths[ks[0]] for ks in groups]).tolist()]
        self._outputs = _reduce_index(groups)
        self._rows = _reduce_index([[row_start[k] + c for k in ks] for ks in groups for c in range(int(widths[ks[0]]))])

    def merged(self, probe: ActivationProbe, parts: dict) -> dict:
        """The probe's batch partials with each layer's calls merged (the probe's merge rules; "measured": all)."""
        if not self.merges and not self.leftover.any():
            return parts
        out = {}
        for key, value in parts.items():
            rule = "min" if key == "measured" else probe.merge.get(key, "sum")
            order, starts = self._rows if key in probe.row_parts else self._outputs
            out[key] = _UFUNC[rule].reduceat(np.asarray(value)[order], starts, axis=0) if len(order) else \
                np.asarray(value)[order]
        return out


def _reduce_index(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(the members of every group one after another, where each group starts): a ufunc's reduceat merges them."""
    order = np.array([m for group in groups for m in group], dtype=np.int64)
    return order, np.cumsum([0] + [len(g) for g in groups[:-1]]).astype(np.int64)


class Packed:
    """Where a compiled output's probe parts lie in the one float64 tensor they were packed in (packed_parts): one
    graph output and one transfer slot for the output, not one per part. `layout`: (probe, {key: (offset, shape)},
    {key: the parts that are not tensors}, the keys in their order)."""

    __slots__ = ("layout",)

    def __init__(self, layout: list[tuple]):
        self.layout = layout


def packed_parts(batched: list[tuple]) -> list[tuple]:
    """[(probe, parts)] of one output, inside a compiled graph: the tensor parts in one float64 tensor (a statistic
    reaches the host as float64 in any case), as [(Packed, {"values": tensor})]; as it is where a part's shape is
    not a plain one (dynamic shapes) or none is a tensor."""
    flat, layout, at = [], [], 0
    for p, parts in batched:
        where, rest = {}, {}
        for k, v in parts.items():
            if not isinstance(v, torch.Tensor):
                rest[k] = v
                continue
            shape = tuple(v.shape)
            if not all(type(d) is int for d in shape):
                return batched
            where[k] = (at, shape)
            at += math.prod(shape)
            flat.append(v.reshape(-1).to(torch.float64))
        layout.append((p, where, rest, tuple(parts)))
    return [(Packed(layout), {"values": torch.cat(flat)})] if flat else batched


def unpacked_parts(results: list[tuple]) -> list[tuple]:
    """Host side: packed_parts' [(Packed, {"values": float64 array})] back as [(probe, parts)] (views); others as
    they are."""
    if len(results) != 1 or not isinstance(results[0][0], Packed):
        return results
    packed, parts = results[0]
    values = np.asarray(parts["values"], dtype=np.float64)
    return [(p, {k: values[where[k][0]:where[k][0] + math.prod(where[k][1])].reshape(where[k][1]) if k in where
                 else rest[k] for k in order}) for p, where, rest, order in packed.layout]


def joined_batches(batches: list[tuple]) -> tuple | None:
    """A step's batches (layers, row_start, results) as one (compiled: a batch per output; several forward passes
    of one step: a batch each), each part's values one after another; None where their probes or parts differ, or an
    output has no rows (a finalize_outputs reduces over each output's rows)."""
    if not batches:
        return None
    layers = [layer for b in batches for layer in b[0]]
    widths = np.concatenate([np.diff(b[1]) for b in batches])
    keys = [[(p, tuple(parts)) for p, parts in b[2]] for b in batches]
    if (widths == 0).any() or any(k != keys[0] for k in keys[1:]):
        return None
    if len(batches) == 1:
        return layers, batches[0][1], batches[0][2]
    results = [(p, {key: _joined([b[2][j][1][key] for b in batches]) for key in parts})
               for j, (p, parts) in enumerate(batches[0][2])]
    return layers, [0, *np.cumsum(widths).tolist()], results


def _joined(values: list):
    """One part's values over several batches, one after another (arrays, or lists of numbers)."""
    if all(isinstance(v, list) for v in values):
        return np.array([x for v in values for x in v])
    return np.concatenate([v if isinstance(v, np.ndarray) and v.ndim else np.atleast_1d(np.asarray(v)) for v in values])


@functools.lru_cache(maxsize=16)
def merge_plan(layers: tuple[int, ...], row_start: tuple[int, ...]) -> MergePlan:
    """The MergePlan of a batch's order of layers (a forward pass takes the same path step after step)."""
    return MergePlan(layers, row_start)
