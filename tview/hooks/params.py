"""Per-parameter-tensor reductions of every recorded layer's weights and gradients, in a few multi-tensor
ops for the whole model, with no host sync and no parameter-sized scratch: what parameter probes compute with.

Memory: one kept copy of the weights (flat, padded to blocks, in the parameters' dtype: the previous recorded
step's weights for the update ratio, and a contiguous image of the current ones for block reductions). The
initial weights (init_distance) are not held: they are read back from the float32 file the Recorder keeps
beside the shard (OriginWeights). Float32 parameters: the copy is also the scratch of a recorded step
(gradients, W0, trajectory directions, histogram bins written into it in turn; the weights copied back once,
after the step's last user: ParamStep.scratch); other dtypes (or COPY_AS_SCRATCH False): one reused float32
chunk of max(2M elements, a quarter of the parameters). Every parameter tensor starts at a multiple of BLOCK
elements in the flat layouts, so a [blocks, BLOCK] view reduces per block in one op and blocks sum to
parameters on the host, in finalize (the block sums join the step's one transfer: no op to sum them per tensor;
under FSDP2 one segment_reduce with precomputed offsets, unsafe=True: nothing read back, before the sums over
the ranks); the padding is set (zero, or NaN for histograms) within the same multi-tensor copy that loads a
chunk. Per-parameter results are summed per layer on the host, in finalize, on the writer thread; per-tensor
scalars travel as lists of 0-d tensors (no stack op). NaN and Inf in a gradient are read from its norms (a NaN
makes the sum of squares NaN; an Inf makes the largest magnitude Inf). No per-element temporary on a recorded
step: torch.sum(x, dtype=float64) would copy x in float64 first (a GPU too), so float64 weight sums take the
weights into the scratch as float64 in two parts (weight_sums64), or cast pieces of bounded size (cast_ranges).
"""

from __future__ import annotations

import os
import tempfile
import weakref
from contextlib import contextmanager
from functools import cached_property

import numpy as np
import torch

from tview.hooks.foreach import foreach_powsum
from tview.hooks.origin import origin_offsets
from tview.hooks.probes import DETAIL, EVERY, hist_bins_host, one_tensor
from tview.hooks.transfer import PerBlock
from tview.store import schema

FORCE_DEVICE_PATH = os.environ.get("TVIEW_FORCE_DEVICE_PATH") == "1"
BLOCK = 256  # elements per block; parameter tensors start on a block boundary in the flat layouts
CHUNK_MIN = 1 << 21  # elements of the reused float32 chunk, at least (or the whole model if smaller)
CHUNK_SHARE = 4  # the chunk holds at least 1/CHUNK_SHARE of the parameters: at most that many chunks
HIST_WIDTH = schema.HIST_BINS + 1  # a histogram row per parameter tensor: the bins, then NaN
COPY_AS_SCRATCH = True  # float32 parameters: the weight copy is the scratch (False: a bounded chunk, as other dtypes)
CAST_ROWS = 4096  # blocks a device reduction casts at once, at least (1M elements: an 8 MiB float64 image)
CAST_PIECES = 16  # and at most this many pieces
HIST_SLICE_BLOCKS = 256  # the CPU's own path bins this many blocks at once (bounded temporaries: 64k values)
CPU_ROWS = 4096  # blocks a CPU reduction with a dtype cast takes at once: it casts a copy of its input first


def local_tensor(t: torch.Tensor | None) -> torch.Tensor | None:
    """The part of `t` this rank holds: a DTensor's local shard (FSDP2), else `t` itself."""
    if t is not None and hasattr(t, "to_local") and _is_dtensor(t):
        return t.to_local()
    return t


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)


def _hist_edges() -> np.ndarray:
    """The fixed signed-log histogram's finite edges, float32: exact zeros alone between 0 and the smallest
    positive float32."""
    k = schema.HIST_HALF
    mags = 10.0 ** (schema.HIST_LO + np.arange(1, k) / schema.HIST_PER_DECADE)
    return np.concatenate([-mags[::-1], [0.0, np.nextafter(np.float32(0), np.float32(1))], mags]).astype(np.float32)


def hist_boundaries_below(device) -> torch.Tensor:
    """Float32 boundaries for torch.bucketize(right=False) of float32 values, with no mapping of Inf first: the
    count of boundaries < x is x's bin in the fixed signed-log histogram (exact zeros alone in the middle bin;
    a magnitude on an edge in the outer bin, on either side, as hist_bin_index puts it). A negative edge -e
    stands as itself (-e < -e is false: -e stays in the bin below); zero and each positive edge e as the float32
    just below it (b < e: e goes up). The last boundary, +Inf itself, keeps +Inf in the top bin (-Inf lands in
    bin 0) and sends NaN (never compared true) to the spare bin HIST_BINS."""
    edges = _hist_edges()
    below = np.where(edges < 0, edges, np.nextafter(edges, np.float32(-np.inf)))
    return torch.tensor(np.concatenate([below, [np.inf]]), dtype=torch.float32, device=device)


def _channel_map(params: list[torch.Tensor], dim: int | None, groups: int) -> tuple[int, list]:
    """(output channels, per parameter an [elements] -> channel map as (segment starts, lengths, channel ids)
    or None when the parameter has no per-channel part). dim 0: Conv/Linear (weight [Cout, ...], bias
    [Cout]); dim 1: ConvTranspose (weight [Cin, Cout/groups, k...], bias [Cout])."""
    if dim is None or not params or params[0].dim() < 2:
        return 0, [None] * len(params)
    w = params[0]
    channels = int(w.shape[0]) if dim == 0 else int(w.shape[1]) * groups
    maps = []
    for p in params:
        if p.dim() == 1 and p.numel() == channels:  # bias: one element per channel
            maps.append((np.arange(channels), np.ones(channels, dtype=np.int64), np.arange(channels)))
        elif dim == 0 and p.dim() >= 1 and p.shape[0] == channels and p.numel():
            row = p.numel() // channels
            maps.append((np.arange(channels) * row, np.full(channels, row), np.arange(channels)))
        elif p is w and dim == 1 and p.numel():
            cin, per_group, k = int(p.shape[0]), int(p.shape[1]), int(np.prod(p.shape[2:], dtype=np.int64))
            i, j = np.divmod(np.arange(cin * per_group), per_group)
            maps.append((np.arange(cin * per_group) * k, np.full(cin * per_group, k),
                         (i // max(cin // groups, 1)) * per_group + j))
        else:
            maps.append(None)
    return channels, maps


class ParamContext:
    """Every recorded layer's own parameters (weight and bias together), as this rank holds them.

    `channel_dims[k]`: None (no per-channel statistics), 0 (Conv/Linear: weight dim 0 = output channels)
    or 1 (ConvTranspose: weight [Cin, Cout/groups, ...]; `groups[k]`, else inferred from the bias).
    A bool is read as the former interface's "channel layer" flag (True: 0)."""

    def __init__(self, params_per_layer: list[list[torch.Tensor]], channel_dims: list | None = None,
                 groups: list[int] | None = None):
        self.per_layer = params_per_layer
        self.params = [p for ps in params_per_layer for p in ps]
        self.sizes = [sum(p.numel() for p in ps) for ps in params_per_layer]  # whole (unsharded) tensors
        self.n = len(self.sizes)
        self.counts = np.asarray(self.sizes, dtype=np.float64)
        self.layer_of = np.repeat(np.arange(self.n), [len(ps) for ps in params_per_layer])
        self.param_numel = np.array([p.numel() for p in self.params], dtype=np.float64)
        self.is_sharded = any(_is_dtensor(p) for p in self.params)
        local = self.local_params()
        self.device = local[0].device if local else torch.device("cpu")
        self.host = self.device.type == "cpu" and not FORCE_DEVICE_PATH and not self.is_sharded
        dtypes = {p.dtype for p in local}
        self.copy_dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        self.use_copy = self.copy_dtype == torch.float32 and COPY_AS_SCRATCH  # the copy doubles as the scratch
        self.keeps_weights = False  # set by the probes that read the copy's weights (setup, or first use)
        self.wants_grads = False  # set by the probes that read gradient statistics
        self.copy_state = "dirty"  # "weights" (the last gathered), "update" (W_before - W), "dirty" (scratch)
        self.gathered = False  # the copy has held weights: an update can be measured against them
        self.origin_path: str | None = None  # the file of the weights the run started from (set by the Recorder)
        self.scratch_users: list = []  # probes that use the scratch, in the order they compute (see use_scratch)
        self._set_layout([p.numel() for p in local])
        dims = [None if d is False else 0 if d is True else d for d in (channel_dims or [None] * self.n)]
        self._set_channels(local, dims, groups)
        self._blocks32 = torch.zeros(self.nblocks, dtype=torch.float32, device=self.device)  # reused
        self._blocks64 = torch.zeros(self.nblocks, dtype=torch.float64, device=self.device)
        for constant in ("channel_segments", "_boundaries", "_hist_base", "_one", "_nans", "padding_views",
                         "piece_views"):
            getattr(self, constant)  # made now: a host-to-device copy on a recorded step would wait
        if self.use_copy:
            self.copy_padding_views  # noqa: B018 (the copy is the scratch: made now, once)

    # -- layout -------------------------------------------------------------------------------
    def local_params(self) -> list[torch.Tensor]:
        """The parameter tensors as this rank holds them (FSDP2: each DTensor's local shard)."""
        return [local_tensor(p) for p in self.params] if self.is_sharded else self.params

    def _set_layout(self, numels: list[int]):
        self.numels = np.asarray(numels, dtype=np.int64)
        blocks = -(-self.numels // BLOCK)
        self.starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64) * BLOCK
        self.nblocks = int(blocks.sum())
        self.total = self.nblocks * BLOCK
        self.block_param = np.repeat(np.arange(len(numels)), blocks)
        offsets = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)
        self._block_offsets = torch.as_tensor(offsets, device=self.device)
        self._block_starts = np.minimum(offsets[:-1], max(self.nblocks - 1, 0))  # for reduceat (empty: zeroed)
        self.nonempty = [i for i, n in enumerate(numels) if n]
        cb = self.nblocks if self.use_copy else max(-(-CHUNK_MIN // BLOCK), -(-self.nblocks // CHUNK_SHARE))
        self.chunk_blocks = max(min(cb, self.nblocks), 1)
        self.chunks = [(b, min(b + self.chunk_blocks, self.nblocks)) for b in range(0, self.nblocks, self.chunk_blocks)]
        self.pieces = [self._pieces(b0 * BLOCK, b1 * BLOCK) for b0, b1 in self.chunks]

    def _pieces(self, lo: int, hi: int) -> list[tuple[int, int, int, int]]:
        """(parameter, first element, end element, offset in the chunk) of each tensor part in [lo, hi)."""
        out = []
        for i in self.nonempty:
            a, b = max(lo, self.starts[i]), min(hi, self.starts[i] + self.numels[i])
            if a < b:
                out.append((i, int(a - self.starts[i]), int(b - self.starts[i]), int(a - lo)))
        return out

    def _set_channels(self, local, dims, groups):
        self.channel_widths, spans, first = [], [], 0
        k = 0
        for layer, ps in enumerate(self.per_layer):
            g = (groups or [None] * self.n)[layer] or self._inferred_groups(ps, dims[layer])
            width, maps = _channel_map(local[k:k + len(ps)], dims[layer], g) if not self.is_sharded else (0, [])
            self.channel_widths.append(width)
            for j, m in enumerate(maps):
                if m is not None:
                    spans.append((self.starts[k + j] + m[0], m[1], first + m[2]))
            first += width
            k += len(ps)
        self.total_channels = first
        self._channel_spans = spans

    @staticmethod
    def _inferred_groups(ps, dim) -> int:
        if dim == 1 and len(ps) > 1 and ps[0].dim() >= 2 and ps[1].dim() == 1 and ps[0].shape[1]:
            return max(ps[1].numel() // int(ps[0].shape[1]), 1)
        return 1

    @cached_property
    def channel_segments(self) -> tuple[list[torch.Tensor], np.ndarray]:
        """Per chunk, segment offsets covering it (device), and per segment, in chunk order, its channel id
        or -1 (filler: other parameters, padding)."""
        spans = self._channel_spans or [(np.zeros(1, np.int64), np.zeros(1, np.int64), np.full(1, -1))]
        starts = np.concatenate([s[0] for s in spans])
        ends = starts + np.concatenate([s[1] for s in spans])
        ids = np.concatenate([s[2] for s in spans])
        order = np.argsort(starts, kind="stable")
        starts, ends, ids = starts[order], ends[order], ids[order]
        cuts = np.unique(np.concatenate([starts, ends, [b0 * BLOCK for b0, _ in self.chunks], [0, self.total]]))
        j = np.searchsorted(starts, cuts[:-1], side="right") - 1
        inside = (j >= 0) & (cuts[:-1] < ends[np.maximum(j, 0)])
        seg_ids = np.where(inside, ids[np.maximum(j, 0)], -1)
        offsets = []
        for b0, b1 in self.chunks:
            lo, hi = b0 * BLOCK, b1 * BLOCK
            mine = cuts[(cuts >= lo) & (cuts <= hi)] - lo
            offsets.append(torch.as_tensor(mine, dtype=torch.int64, device=self.device))
        return offsets, seg_ids

    # -- kept buffers -------------------------------------------------------------------------
    @cached_property
    def chunk(self) -> torch.Tensor:
        """The float32 scratch (its contents last until the next use): the weight copy itself for float32
        parameters (see ParamStep.scratch), else a reused chunk."""
        if self.use_copy:
            return self.copy
        return torch.zeros(self.chunk_blocks * BLOCK, dtype=torch.float32, device=self.device)

    @cached_property
    def padding_views(self) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """Per chunk, (views of the chunk buffer where no parameter lies, zeros of the same sizes): appended to
        a multi-tensor op's lists, they zero the padding in the same op."""
        return [self._gaps(self.chunk, [(off, off + b - a) for _, a, b, off in self.pieces[c]], (b1 - b0) * BLOCK)
                for c, (b0, b1) in enumerate(self.chunks)]

    @cached_property
    def piece_views(self) -> list[list[tuple[int, torch.Tensor, slice | None]]]:
        """Per chunk, (parameter, the chunk buffer's view where its piece goes, None where the piece is the whole
        tensor, else the slice of its flat values): made once, a whole tensor's view in the tensor's own shape, so
        a copy into it takes the tensor as it is (no view op on a recorded step)."""
        shapes = [local_tensor(p).shape for p in self.params]
        out = []
        for pieces in self.pieces:
            row = []
            for i, a, b, off in pieces:
                whole = a == 0 and b == self.numels[i]
                view = self.chunk[off:off + b - a]
                row.append((i, view.view(shapes[i]) if whole else view, None if whole else slice(a, b)))
            out.append(row)
        return out

    @cached_property
    def copy_padding_views(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """As padding_views, for the kept copy."""
        return self._gaps(self.copy, [(int(s), int(s + n)) for s, n in zip(self.starts, self.numels)], self.total)

    @staticmethod
    def _gaps(buf: torch.Tensor, spans: list[tuple[int, int]], end: int):
        gaps, at = [], 0
        for lo, hi in sorted(spans) + [(end, end)]:
            if lo > at:
                gaps.append(buf[at:lo])
            at = max(at, hi)
        zeros = torch.zeros(max([g.numel() for g in gaps], default=0), dtype=buf.dtype, device=buf.device)
        return gaps, [zeros[:g.numel()] for g in gaps]

    @cached_property
    def copy(self) -> torch.Tensor:
        """The kept flat copy of the weights (zero padding), in the parameters' dtype."""
        return torch.zeros(self.total, dtype=self.copy_dtype, device=self.device)

    @cached_property
    def copy_views(self) -> list[torch.Tensor]:
        return [self.copy[s:s + n].view(p.shape) for s, n, p in zip(self.starts, self.numels, self.local_params())]

    @cached_property
    def _boundaries(self) -> torch.Tensor:
        return hist_boundaries_below(self.device)

    @cached_property
    def _hist_base(self) -> torch.Tensor:
        """Per block, the first histogram cell of its parameter tensor (int32)."""
        return torch.as_tensor(self.block_param * HIST_WIDTH, dtype=torch.int32, device=self.device)

    @cached_property
    def _one(self) -> torch.Tensor:
        return torch.ones(1, dtype=torch.float64, device=self.device)

    def use_scratch(self, probe) -> None:
        """Register `probe` (setup) as a user of the scratch: ParamStep.scratch(probe) restores the weights only
        after the last user due at a step."""
        self.scratch_users.append(probe)

    def followed(self, user) -> bool:
        """A later scratch user computes at every step `user` does (every step, or both detail steps only)."""
        if user is None or user not in self.scratch_users:
            return False
        later = self.scratch_users[self.scratch_users.index(user) + 1:]
        return any(u.cadence == EVERY or user.cadence == DETAIL for u in later)

    # -- reductions ---------------------------------------------------------------------------
    def combine(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Under FSDP2, `t` (partials of this rank's shards) summed (or maxed) over the ranks, in place."""
        if self.is_sharded and torch.distributed.is_initialized():
            reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
            torch.distributed.all_reduce(t, op=reduce_op)
        return t

    def _spread(self, values: list[torch.Tensor] | torch.Tensor, which: list[int]) -> torch.Tensor:
        """[parameter tensors] float32: `values` (0-d tensors or one 1-D tensor, one per index in `which`) in
        place, zeros elsewhere."""
        if len(which) and not isinstance(values, torch.Tensor):
            values = one_tensor(values)
        if len(which) == len(self.params):
            return values
        out = torch.zeros(len(self.params), dtype=torch.float32, device=self.device)
        if len(which):
            out.index_copy_(0, self._index(tuple(which)), values)
        return out

    def spread_pieces(self, values: list[torch.Tensor], c: int) -> torch.Tensor:
        """[parameter tensors] float32: chunk c's per-piece values (0-d; a tensor has one piece per chunk)."""
        return self._spread(values, [i for i, *_ in self.pieces[c]])

    def _index(self, which: tuple[int, ...]) -> torch.Tensor:
        """A device index tensor, kept per subset (a subset changes rarely: frozen layers)."""
        cache = self.__dict__.setdefault("_indices", {})
        if which not in cache:
            cache[which] = torch.as_tensor(which, dtype=torch.int64, device=self.device)
        return cache[which]

    def powsums(self, tensors: list[torch.Tensor | None], power: float = 2) -> torch.Tensor:
        """[parameter tensors] float32 sums of |value| ** power (0 for None), one multi-tensor op."""
        which = [i for i, t in enumerate(tensors) if t is not None]
        return self._spread(foreach_powsum([tensors[i] for i in which], power)
                            if which else [], which)

    def sq_sums(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """[parameter tensors] float32 sums of squares (0 for None), one multi-tensor op."""
        return self.powsums(tensors, 2)

    def load_chunk(self, c: int, tensors: list[torch.Tensor | None], padding: float = 0.0) -> torch.Tensor:
        """Chunk `c` of `tensors` (one per parameter; None: zeros) in the float32 chunk, the padding set to
        `padding` in the same op (NaN: a histogram puts it in the spare bin, counted nowhere)."""
        b0, b1 = self.chunks[c]
        buf = self.chunk[:(b1 - b0) * BLOCK]
        if not all(tensors[i] is not None for i, *_ in self.pieces[c]):
            buf.zero_()  # a tensor without a gradient (frozen): zeros, taken out of histograms on the host
        self.copy_state = "dirty" if self.use_copy else self.copy_state
        gaps, zeros = self.padding_views[c]
        if padding != 0.0:
            zeros = [self._nans[:z.numel()] for z in zeros]
        dst, src = list(gaps), list(zeros)
        for i, view, part in self.piece_views[c]:
            t = tensors[i]
            if t is not None:
                dst.append(view)
                src.append(t if part is None and t.shape == view.shape else t.reshape(-1)[part or slice(None)])
        torch._foreach_copy_(dst, src)
        return buf

    @cached_property
    def _nans(self) -> torch.Tensor:
        return torch.full((BLOCK,), float("nan"), dtype=torch.float32, device=self.device)

    def take_update(self, weights: list[torch.Tensor]) -> bool:
        """Where the copy holds the weights last gathered: it takes W_before - W (True); else False."""
        if not (self.gathered and self.copy_state == "weights"):
            return False
        torch._foreach_sub_(self.copy_views, weights)
        self.copy_state = "update"
        return True

    def gather(self, weights: list[torch.Tensor]) -> torch.Tensor:
        """The copy takes `weights` (gathered); returns their float64 block sums (copy_sums64's), taken while the
        copy is still scratch where that is wide_sums' way."""
        sums64 = self.weight_sums64(weights) if self.wide_sums() else None
        self.put_weights(weights)
        self.gathered = True
        return sums64 if sums64 is not None else self.copy_sums64()

    def put_weights(self, weights: list[torch.Tensor]) -> None:
        """The kept copy := `weights`, padding zero (in the same op)."""
        gaps, zeros = self.copy_padding_views
        torch._foreach_copy_(self.copy_views + gaps, list(weights) + zeros)
        self.copy_state = "weights"

    def cast_ranges(self, b0: int, b1: int):
        """[b0, b1) in pieces that bound the copy a reduction to another dtype makes of its input (torch.sum(x,
        dtype=...) casts x first, on a GPU too: only half/bfloat16 -> float32 casts as it loads): CPU_ROWS
        blocks on the CPU's own path; on a device at least CAST_ROWS blocks and at most CAST_PIECES pieces
        (ops bounded; the float64 image of a piece at most 2/CAST_PIECES of float32 parameters' bytes)."""
        n = b1 - b0
        if self.device.type == "cpu" and not FORCE_DEVICE_PATH:
            step = CPU_ROWS
        else:
            step = max(CAST_ROWS, -(-n // CAST_PIECES))
        return [(r, min(r + step, b1)) for r in range(b0, b1, max(step, 1))]

    def grad_sums(self, tensors: list[torch.Tensor | None]):
        """Float32 sums of `tensors`, as tensor_sums reads them: on the CPU's own path, float32 tensors, one sum per
        tensor (no copy through the scratch); elsewhere per block, through the float32 scratch (see tensor_totals)."""
        which = [i for i in self.nonempty if tensors[i] is not None]
        if self.host and all(tensors[i].dtype == torch.float32 for i in which):
            return self.per_tensor([tensors[i].sum() for i in which], which)
        for c, (b0, b1) in enumerate(self.chunks):
            torch.sum(self.load_chunk(c, tensors).view(-1, BLOCK), 1, out=self._blocks32[b0:b1])
        return self.tensor_totals(self._blocks32)

    def grad_moments(self, tensors: list[torch.Tensor | None]) -> PerBlock:
        """The gradients loaded into the copy (the blockwise pass: one chunk) and reduced per block by two ops,
        var_mean and aminmax, for what the host makes of them (block_moments): per tensor squared norms and largest
        magnitudes, per block sums (the sum and sum of squares of a block are its mean and variance scaled)."""
        rows = self.load_chunk(0, tensors).view(-1, BLOCK)
        var, mean = torch.var_mean(rows, dim=1, correction=0)
        lo, hi = torch.aminmax(rows, dim=1)
        return PerBlock([var, mean, lo, hi], self.block_moments)

    def block_moments(self, values: np.ndarray) -> dict:
        """Host side, from grad_moments' [4, blocks] (variance, mean, least, largest): {"sq": [tensors] squared
        norms, "max_abs": [tensors] largest magnitudes, "sum": [blocks] sums}, as plain reductions would give them
        where a block holds an Inf or a NaN too (its variance and mean are NaN there: the extremes say which)."""
        var, mean, lo, hi = np.asarray(values, dtype=np.float64).reshape(4, -1)
        peak = np.maximum(-lo, hi)  # NaN where the block holds a NaN
        up, down = hi == np.inf, lo == -np.inf
        with np.errstate(invalid="ignore", over="ignore"):
            sq = BLOCK * (var + mean * mean)  # NaN beside a finite peak: float32 overflowed (the plain sum's Inf)
            sq = np.where(np.isfinite(peak), np.where(np.isnan(sq), np.inf, sq), peak)
            sums = np.where(np.isfinite(peak), BLOCK * mean, np.where(up ^ down, np.where(up, np.inf, -np.inf), np.nan))
        return {"sq": self.blocks_to_tensors(sq), "max_abs": self._blocks_max_to_tensors(peak), "sum": sums}

    def tensor_totals(self, blocks: torch.Tensor) -> torch.Tensor:
        """Per-block sums ([..., blocks]) as they go to the host: on the device path left per block, summed per
        tensor there (tensor_sums: no op here); on the CPU's own path summed per tensor here; under FSDP2 summed
        per tensor here, then over the ranks."""
        if not self.is_sharded and not self.host:
            return blocks
        offsets = self._block_offsets if blocks.dim() == 1 else self.block_offsets_rows(blocks.shape[0])
        return self.combine(torch.segment_reduce(blocks, "sum", offsets=offsets, axis=blocks.dim() - 1, unsafe=True))

    def tensor_sums(self, values) -> np.ndarray:
        """Host side: [..., tensors] float64 sums from what grad_sums, copy_sums64 or weight_sums64 sent (per
        block on the device path, unless under FSDP2)."""
        v = np.asarray(values, dtype=np.float64)
        return v if self.host or self.is_sharded else self.blocks_to_tensors(v)

    @property
    def blockwise(self) -> bool:
        """The every-step pass reduces per block of the flat weight copy (a device, float32 parameters, not
        sharded): a few reductions over one buffer, where multi-tensor ones allocate a result per tensor."""
        return self.use_copy and not self.host and not self.is_sharded

    def block_norms(self, reduce: str) -> PerBlock:
        """The scratch's per-block norms (ord 2 or inf, float32) as per-tensor values on the host: squared
        norms summed ("sq"), or the largest ("max"; 0 for an empty tensor)."""
        rows = self.chunk.view(-1, BLOCK)
        if reduce == "sq":
            return PerBlock(torch.linalg.vector_norm(rows, 2, dim=1), self._blocks_sq_to_tensors)
        return PerBlock(torch.linalg.vector_norm(rows, float("inf"), dim=1), self._blocks_max_to_tensors)

    def _blocks_sq_to_tensors(self, norms: np.ndarray) -> np.ndarray:
        return self.blocks_to_tensors(np.square(norms, dtype=np.float64))

    def _blocks_max_to_tensors(self, peaks: np.ndarray) -> np.ndarray:
        if not len(peaks):
            return np.zeros(len(self.numels))
        return np.where(self.numels > 0, np.maximum.reduceat(peaks.astype(np.float64), self._block_starts), 0.0)

    def blocks_to_tensors(self, values) -> np.ndarray:
        """Host side: [..., tensors] float64 sums of per-block values [..., blocks]."""
        v = np.asarray(values, dtype=np.float64)
        return np.add.reduceat(v, self._block_starts, axis=-1) * (self.numels > 0)

    def per_tensor(self, values: list[torch.Tensor], which, op: str | None = None):
        """[parameter tensors] from `values` (0-d, one per index in `which`; 0 elsewhere): a list the step's
        transfer gathers in its cat, or where `values` is one 1-D tensor, one tensor (zeros filled in by one index
        copy where `which` is not every tensor); under FSDP2 one tensor, combined over the ranks by `op`."""
        if self.is_sharded or isinstance(values, torch.Tensor):
            t = self._spread(values, list(which))
            return self.combine(t, op) if op and self.is_sharded else t
        out: list = [None] * len(self.params)
        for i, v in zip(which, values):
            out[i] = v
        return out

    def copy_sums64(self) -> torch.Tensor:
        """[tensors] float64 sums of the kept weight copy (float64 accumulation: deterministic, the same
        weights give the same bits)."""
        if self.host and self.copy_dtype in (torch.float32, torch.float16):  # einsum: 2.4x np.add.reduce's speed
            blocks = np.einsum("ij->i", self.copy.numpy().reshape(-1, BLOCK), dtype=np.float64)
            return torch.from_numpy(self.blocks_to_tensors(blocks))
        rows, blocks = self.copy.view(-1, BLOCK), self._blocks64
        for r0, r1 in self.cast_ranges(0, self.nblocks):  # float64 images of pieces, not of the whole copy
            torch.sum(rows[r0:r1], 1, dtype=torch.float64, out=blocks[r0:r1])
        return self.tensor_totals(blocks)

    def wide_sums(self) -> bool:
        """Whether weight_sums64 goes through the scratch (a device, float32 parameters, more than CAST_ROWS
        blocks: fewer ops than casting pieces, and no cast at all)."""
        return self.use_copy and not self.host and self.nblocks > CAST_ROWS

    def weight_sums64(self, weights: list[torch.Tensor]) -> torch.Tensor:
        """copy_sums64's sums of `weights`, taken while the copy is scratch: the bytes of the float32 copy hold
        half as many float64 values, so the weights go in as float64 in two (or three) parts, each cast as it is
        copied and summed per block in float64: the same bits as summing a float64 image, with none made."""
        blocks = self._blocks64
        self.copy_state = "dirty"
        for (b0, b1, dst, gaps, zeros), src in zip(self._wide_parts, self._wide_sources(weights)):
            torch._foreach_copy_(dst + gaps, src + zeros)
            torch.sum(self._wide[:(b1 - b0) * BLOCK].view(-1, BLOCK), 1, out=blocks[b0:b1])
        return self.tensor_totals(blocks)

    def _wide_sources(self, weights: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per part of _wide_parts, the 1-D pieces of `weights` it takes: views made again only where a weight's
        storage changed (a parameter replaced, `.data` set), else kept: two view ops per tensor a recorded step
        fewer (on a GPU, host time). A weight that is not contiguous (channels_last) reshapes into a copy, never
        kept: made again every time (a kept copy would hold the first step's weights)."""
        key = tuple(w.data_ptr() for w in weights)
        kept = self.__dict__.get("_wide_views")
        if kept is None or kept[0] != key:
            kept = (key, [[weights[i].reshape(-1)[a:b] for i, a, b, _ in self._pieces(b0 * BLOCK, b1 * BLOCK)]
                          for b0, b1, *_ in self._wide_parts])
            self._wide_views = kept if all(w.is_contiguous() for w in weights) else None
        return kept[1]

    @cached_property
    def _wide(self) -> torch.Tensor:
        return self.copy.view(torch.float64)  # total is a multiple of BLOCK: even

    @cached_property
    def _wide_parts(self) -> list:
        """(first block, end block, float64 views of its pieces, padding views, their zeros) per part."""
        per, out = max(self.nblocks // 2, 1), []
        for b0 in range(0, self.nblocks, per):
            b1 = min(b0 + per, self.nblocks)
            pieces = self._pieces(b0 * BLOCK, b1 * BLOCK)
            spans = [(off, off + b - a) for _, a, b, off in pieces]
            gaps, zeros = self._gaps(self._wide, spans, (b1 - b0) * BLOCK)
            out.append((b0, b1, [self._wide[lo:hi] for lo, hi in spans], gaps, zeros))
        return out

    def block_offsets_rows(self, rows: int) -> torch.Tensor:
        """Block offsets repeated for `rows` rows (kept per row count: no copy op on a recorded step)."""
        cache = self.__dict__.setdefault("_offset_rows", {})
        if rows not in cache:
            cache[rows] = self._block_offsets.expand(rows, -1).contiguous()
        return cache[rows]

    def _histogram_chunk(self, buf: torch.Tensor, b0: int, b1: int, table: torch.Tensor) -> None:
        self.copy_state = "dirty" if self.use_copy else self.copy_state
        if self.host:
            self._histogram_chunk_host(buf, b0, b1, table)
            return
        idx = buf.view(torch.int32)  # the bin index overwrites the value it comes from, element by element
        torch.bucketize(buf, self._boundaries, out_int32=True, out=idx)
        idx.view(-1, BLOCK).add_(self._hist_base[b0:b1, None])
        table.index_add_(0, idx, self._one.expand(idx.numel()))

    def _histogram_chunk_host(self, buf: torch.Tensor, b0: int, b1: int, table: torch.Tensor) -> None:
        """The CPU's own path: hist_bins_host's vectorised passes (bucketize's search per value took 31 ms for 3C3D's
        895k parameters) and a bincount, HIST_SLICE_BLOCKS blocks at a time."""
        base = self._hist_base.numpy()  # per block, its tensor's first cell (made at setup, on the CPU here)
        counts = np.zeros(table.numel())
        for r0 in range(b0, b1, HIST_SLICE_BLOCKS):
            r1 = min(r0 + HIST_SLICE_BLOCKS, b1)
            part = buf[(r0 - b0) * BLOCK:(r1 - b0) * BLOCK]
            bins = hist_bins_host(part.numpy()).reshape(-1, BLOCK)
            bins += base[r0:r1, None]
            counts += np.bincount(bins.reshape(-1), minlength=len(counts))
        table.add_(torch.from_numpy(counts))

    def histogram(self, tensors: list[torch.Tensor | None], table: torch.Tensor | None = None) -> torch.Tensor:
        """[tensors * HIST_WIDTH] float64 counts, the last of each row NaN and padding (dropped by hist_rows), added
        into `table` (zeros) when given."""
        if table is None:
            table = torch.zeros(len(self.params) * HIST_WIDTH, dtype=torch.float64, device=self.device)
        for c, (b0, b1) in enumerate(self.chunks):
            self._histogram_chunk(self.load_chunk(c, tensors, padding=float("nan")), b0, b1, table)
        return table

    def hist_rows(self, table: np.ndarray, zeros_not_values: np.ndarray | None = None) -> np.ndarray:
        """Host side: [layers, HIST_BINS] counts from a histogram table, NaN dropped, and per tensor
        `zeros_not_values` (the zeros that stood for a missing gradient) out of the zero bin."""
        t = np.asarray(table, dtype=np.float64).reshape(len(self.params), HIST_WIDTH).copy()
        if zeros_not_values is not None:
            t[:, schema.HIST_HALF] -= zeros_not_values
        return self.per_layer_sum(t)[:, :schema.HIST_BINS]

    def channel_sq(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """Per channel segment (see channel_segments) sums of squares, concatenated over the chunks."""
        offsets, _ = self.channel_segments
        out = []
        for c in range(len(self.chunks)):
            buf = self.load_chunk(c, tensors)
            out.append(torch.segment_reduce(buf.mul_(buf), "sum", offsets=offsets[c], unsafe=True))
        return torch.cat(out) if len(out) > 1 else out[0]

    # -- host side (finalize) -----------------------------------------------------------------
    def per_layer_sum(self, per_param) -> np.ndarray:
        """[layers, ...] float64 sums of per-parameter-tensor values (leading axis: tensors, grouped by layer)."""
        return self._per_layer(np.add, np.asarray(per_param, dtype=np.float64), 0.0)

    def per_layer_max(self, per_param) -> np.ndarray:
        return self._per_layer(np.fmax, np.asarray(per_param, dtype=np.float64), -np.inf)

    def _per_layer(self, ufunc, v: np.ndarray, empty: float) -> np.ndarray:
        """ufunc.reduceat over each layer's run of tensors (a layer without tensors: `empty`); ufunc.at is 20x
        slower."""
        out = np.full((self.n,) + v.shape[1:], empty)
        if len(v):
            have = self._layer_tensor_counts > 0
            out[have] = ufunc.reduceat(v, self._layer_first[have], axis=0)
        return out

    @cached_property
    def _layer_tensor_counts(self) -> np.ndarray:
        return np.bincount(self.layer_of, minlength=self.n)

    @cached_property
    def _layer_first(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self._layer_tensor_counts)[:-1]]).astype(np.int64)

    def channel_values(self, per_segment) -> np.ndarray:
        """[total channels] sums over each channel's segments."""
        _, ids = self.channel_segments
        v = np.asarray(per_segment, dtype=np.float64)
        keep = ids >= 0
        return np.bincount(ids[keep], weights=v[keep], minlength=self.total_channels)

    def present(self, flags: list[bool]) -> np.ndarray:
        """[layers] True where any of the layer's tensors has the flag."""
        return np.bincount(self.layer_of, weights=np.asarray(flags, dtype=np.float64), minlength=self.n) > 0


class ParamStep:
    """What parameter probes read at one recorded step, computed once on first use and shared: gradient
    statistics per parameter tensor, the weights gathered into the kept copy (and the update from the
    previous gathered weights), and this rank's local gradient norms under DDP.

    `local`: a float32 tensor [parameter tensors] of squared local-gradient norms (or a PerBlock that reaches the
    host as one: a DDP comm hook's), or a list of local gradients per parameter tensor (None where there is none),
    or None."""

    def __init__(self, ctx: ParamContext, local=None):
        self.ctx = ctx
        self._local = local

    @cached_property
    def weights(self) -> list[torch.Tensor]:
        return self.ctx.local_params()

    @cached_property
    def grads(self) -> list[torch.Tensor | None]:
        return [local_tensor(p.grad) for p in self.ctx.params]

    @cached_property
    def has_grad(self) -> np.ndarray:
        return self.ctx.present([p.grad is not None for p in self.ctx.params])

    @cached_property
    def grad_count(self) -> np.ndarray:
        """[layers] elements with a gradient (the whole tensors')."""
        return self.ctx.per_layer_sum(self.ctx.param_numel * [p.grad is not None for p in self.ctx.params])

    @cached_property
    def missing_numel(self) -> np.ndarray:
        """[parameter tensors] elements of the tensors without a gradient (whole tensors')."""
        return self.ctx.param_numel * np.array([p.grad is None for p in self.ctx.params], dtype=np.float64)

    def hist_table(self, row: int) -> torch.Tensor:
        """Row `row` (0: gradients, 1: weights) of this step's zeroed histogram tables: one op zeroes both."""
        if "_hist" not in self.__dict__:
            self._hist = torch.zeros(2, len(self.ctx.params) * HIST_WIDTH, dtype=torch.float64, device=self.ctx.device)
        return self._hist[row]

    @cached_property
    def _done(self) -> dict:
        return {}

    @property
    def grad_stats(self) -> dict:
        """Per tensor: sq (squared norm), max_abs, sum, nan, inf; combined over FSDP2 ranks."""
        self.ctx.wants_grads = True
        if "grads" not in self._done:
            self._done.update(self._pass(weights=self.ctx.keeps_weights and "weights" not in self._done, grads=True))
        return self._done["grads"]

    @property
    def gathered_now(self) -> bool:
        """The kept copy took this step's weights (a snapshot may read them from it while they stay there)."""
        return "weights" in self._done

    @property
    def weight_stats(self) -> dict:
        """Per tensor: sq, sum (float64) and dsq (squared distance to the previous gathered weights, absent
        the first time)."""
        self.ctx.keeps_weights = True
        if "weights" not in self._done:
            grads = self.ctx.wants_grads and "grads" not in self._done and bool(self.has_grad.any())
            self._done.update(self._pass(weights=True, grads=grads))
        return self._done["weights"]

    def _pass(self, weights: bool, grads: bool) -> dict:
        """The every-step pass, no temporary: the kept copy takes W_before - W (when it holds W_before); one
        multi-tensor op squares the norms of that update, of the weights and of the gradients, another takes the
        gradients' largest magnitudes; the gradients go through the scratch for their block sums; the copy
        takes W (and its float64 block sums)."""
        ctx, w, g, n = self.ctx, self.weights, self.grads, len(self.ctx.params)
        have = [i for i, t in enumerate(g) if t is not None] if grads else []
        if ctx.blockwise:
            with torch.no_grad():
                return self._pass_blockwise(weights, grads, have)
        with torch.no_grad():
            update = weights and ctx.take_update(w)
            tensors = (ctx.copy_views if update else []) + (w if weights else []) + [g[i] for i in have]
            sums = one_tensor(foreach_powsum(tensors)) if tensors else []
            if ctx.is_sharded and len(sums):  # FSDP2: the whole tensors' squares, in one all-reduce
                sums = ctx.combine(sums)
            out, k = {}, n if update else 0
            if grads:
                out["grads"] = self._grad_pass(sums[k + (n if weights else 0):], have)
            if weights:
                sums64 = ctx.gather(w)
                out["weights"] = {"sq": ctx.per_tensor(sums[k:k + n], range(n)), "sum": sums64}
                if update:
                    out["weights"]["dsq"] = ctx.per_tensor(sums[:n], range(n))
        return out

    def _pass_blockwise(self, weights: bool, grads: bool, have: list[int]) -> dict:
        """_pass through the weight copy's blocks: the update (W_before - W) in the copy, its block norms; the
        gradients loaded into the copy, their block sums, norms and largest magnitudes; the copy takes W, its
        block norms and float64 block sums. Each statistic one reduction over the buffer, whatever the tensor
        count; the host sums the blocks per tensor."""
        ctx, w, out = self.ctx, self.weights, {}
        update = weights and ctx.take_update(w)
        if update:
            dsq = ctx.block_norms("sq")
        if grads and have:
            out["grads"] = {"moments": ctx.grad_moments(self.grads)}  # the gradients loaded into the copy
        elif grads:
            out["grads"] = self._grad_pass([], [])
        if weights:
            sums64 = ctx.gather(w)
            out["weights"] = {"sq": ctx.block_norms("sq"), "sum": sums64}
            if update:
                out["weights"]["dsq"] = dsq
        return out

    def _grad_pass(self, sq: list[torch.Tensor], have: list[int]) -> dict:
        """Squared norms, largest magnitudes (the inf-norm of an empty tensor has no value: 0) and block sums."""
        ctx, g = self.ctx, self.grads
        peaks = [i for i in have if ctx.numels[i]]
        peak = _peaks([g[i] for i in peaks], ctx.host)
        return {"sq": ctx.per_tensor(sq, have), "max_abs": ctx.per_tensor(peak, peaks, "max"),
                "sum": ctx.grad_sums(g)}

    @contextmanager
    def scratch(self, user=None):
        """Around a use of ctx.chunk: when that is the weight copy, the copy first takes this step's weights
        (and the update is measured), and gets them back after, unless `user` (a probe registered with
        ctx.use_scratch) is followed on every step it runs by another user, which will (one restore a step)."""
        ctx = self.ctx
        keep = ctx.use_copy and ctx.keeps_weights
        if keep:
            self.weight_stats  # noqa: B018
        with torch.no_grad():
            try:
                yield
            except BaseException:
                ctx.scratch_users = [u for u in ctx.scratch_users if u is not user]  # it will be dropped
                if keep:
                    ctx.put_weights(self.weights)
                raise
            if keep and not ctx.followed(user) and ctx.copy_state != "weights":
                ctx.put_weights(self.weights)

    @cached_property
    def local(self) -> tuple[torch.Tensor, np.ndarray] | None:
        """([parameter tensors] squared local-gradient norms, NaN where a tensor had none; [layers] measured:
        those with a trainable tensor), or None. `local` may also be a list of local gradients (None: none)."""
        loc = self._local
        if loc is None or (isinstance(loc, list) and all(t is None for t in loc)):
            return None
        if isinstance(loc, (torch.Tensor, PerBlock)):
            return loc, self.ctx.present([p.requires_grad for p in self.ctx.params])
        with torch.no_grad():
            sq = self.ctx.sq_sums([local_tensor(t) for t in loc])
        return sq, self.ctx.present([t is not None for t in loc])


def _peaks(tensors: list[torch.Tensor], host: bool) -> torch.Tensor | list:
    """Each tensor's largest magnitude (float32; NaN where it holds a NaN): one multi-tensor inf-norm, or on the
    CPU's own path from aminmax (the inf-norm's CPU kernel is 17x slower)."""
    if not tensors:
        return []
    if not host:
        return one_tensor(torch._foreach_norm(tensors, float("inf"), dtype=torch.float32))
    lo, hi = zip(*map(torch.aminmax, tensors))
    return torch.maximum(torch.stack(lo).neg_(), torch.stack(hi)).float()


class OriginWeights:
    """The weights a run started from (W0), never held in memory: read back at each use from the file the
    Recorder keeps beside the shard (rank-NNNNN.init.npz, float32 arrays stored uncompressed), or, where that
    file cannot be read, from an unnamed temporary file of the weights at setup. Off the CPU, W0 is held once
    in pinned host memory (none on the device) and copied to the device without a wait."""

    READ = 1 << 16  # float32 values a host-side pass (setup) reads at once

    def __init__(self, ctx: ParamContext, path: str | None = None):
        self.ctx = ctx
        local = ctx.local_params()
        offsets = origin_offsets(path, ctx.params) if path else None
        self._file = open(path, "rb") if offsets is not None else self._write_temporary(local)  # noqa: SIM115
        self.offsets = offsets if offsets is not None else self._temporary_offsets(local)
        self._closer = weakref.finalize(self, self._file.close)
        self.host = None
        if ctx.device.type != "cpu":
            self.host = torch.empty(int(ctx.numels.sum()), dtype=torch.float32, pin_memory=True)
            starts = np.concatenate([[0], np.cumsum(ctx.numels)])
            for i in ctx.nonempty:
                self._read(i, 0, int(ctx.numels[i]), self.host[starts[i]:starts[i + 1]])
            self.host_starts = starts

    @staticmethod
    def _write_temporary(local: list[torch.Tensor]):
        f = tempfile.TemporaryFile()  # noqa: SIM115 (kept open: it is the storage)
        for t in local:  # written from the tensor's memory (no byte-string copy of a float32 CPU tensor)
            f.write(memoryview(t.detach().float().cpu().contiguous().reshape(-1).numpy()).cast("B"))
        f.flush()
        return f

    @staticmethod
    def _temporary_offsets(local: list[torch.Tensor]) -> list[int]:
        return np.concatenate([[0], np.cumsum([4 * t.numel() for t in local])[:-1]]).astype(int).tolist()

    def _read(self, i: int, a: int, b: int, out: torch.Tensor) -> None:
        """Elements [a, b) of tensor i (float32) into the CPU float32 tensor `out`, straight from the file."""
        view = memoryview(out.numpy()).cast("B")
        at, pos = 0, self.offsets[i] + 4 * a
        while at < len(view):
            got = os.preadv(self._file.fileno(), [view[at:]], pos + at)
            if got <= 0:
                raise OSError(f"{self._file.name}: the kept initial weights end early")
            at += got

    def sq_sums(self) -> np.ndarray:
        """[tensors] float64 |W0|^2, on the host, read in bounded pieces."""
        out = np.zeros(len(self.ctx.params))
        buf = torch.empty(self.READ, dtype=torch.float32)
        for i in self.ctx.nonempty:
            n = int(self.ctx.numels[i])
            for a in range(0, n, self.READ):
                part = buf[:min(n - a, self.READ)]
                self._read(i, a, a + part.numel(), part)
                out[i] += float(np.dot(part.numpy().astype(np.float64), part.numpy()))
        return self.ctx.combine(torch.from_numpy(out)).numpy() if self.ctx.is_sharded else out

    def load(self, c: int, buf: torch.Tensor, pieces) -> None:
        """Chunk c's pieces of W0 into `buf` (float32, the chunk's layout)."""
        if self.host is None:
            for i, a, b, off in pieces:
                self._read(i, a, b, buf[off:off + b - a])
            return
        s = self.host_starts
        torch._foreach_copy_([buf[off:off + b - a] for _, a, b, off in pieces],
                             [self.host[s[i] + a:s[i] + b] for i, a, b, _ in pieces], non_blocking=True)


def origin_distance_sq(ctx: ParamContext, origin: OriginWeights, weights: list[torch.Tensor]):
    """[tensors] float32 |W - W0|^2 (see ParamContext.per_tensor): per chunk of the scratch, W0 read in, W
    subtracted, squares summed per piece (the scratch is left dirty: see ParamStep.scratch)."""
    parts = []
    with torch.no_grad():
        for c, (b0, b1) in enumerate(ctx.chunks):
            pieces = ctx.pieces[c]
            if not pieces:
                continue
            buf = ctx.chunk[:(b1 - b0) * BLOCK]
            ctx.copy_state = "dirty" if ctx.use_copy else ctx.copy_state
            origin.load(c, buf, pieces)
            views = [buf[off:off + b - a] for _, a, b, off in pieces]
            torch._foreach_sub_(views, [weights[i].reshape(-1)[a:b] for i, a, b, _ in pieces])
            parts.append((one_tensor(foreach_powsum(views)), c))
        if len(parts) == 1 and len(ctx.pieces[parts[0][1]]) == len(ctx.nonempty):  # one chunk: no sum of parts
            return ctx.per_tensor(parts[0][0], ctx.nonempty, "sum")
        out = ctx.sq_sums([None] * len(ctx.params))
        for sums, c in parts:  # a tensor split over chunks: its pieces' sums added
            out.add_(ctx.spread_pieces(sums, c))
    return ctx.combine(out)


def direction_parts(seed: int, dims: int, nblocks: int) -> tuple[np.ndarray, np.ndarray]:
    """The trajectory's directions, as ([BLOCK, dims] float32 N(0, 1) pattern, [blocks, dims] int8 signs): in block
    b of the flat layout, direction d is signs[b, d] * pattern[:, d]. Drawn from a generator seeded by (seed,
    dims): the same on every rank and resumed run of the same model."""
    g = np.random.Generator(np.random.PCG64([seed, dims]))
    pattern = g.standard_normal((BLOCK, dims)).astype(np.float32)
    return pattern, g.choice(np.array([-1, 1], dtype=np.int8), size=(nblocks, dims))


def projections(ctx: ParamContext, pattern: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """[blocks, dims] float32: each block of the weights (flat layout, zero padding) times the directions' pattern,
    in one matmul over the kept copy (float32 parameters: it holds the weights, or takes them back now, as the
    last user of the scratch would), else per chunk of the scratch. Signs and sums per tensor: on the host."""
    if ctx.use_copy:
        if ctx.copy_state != "weights":
            ctx.put_weights(weights)
        return torch.mm(ctx.copy.view(-1, BLOCK), pattern)
    out = torch.empty(ctx.nblocks, pattern.shape[1], device=ctx.device)
    for c, (b0, b1) in enumerate(ctx.chunks):
        torch.mm(ctx.load_chunk(c, weights).view(-1, BLOCK), pattern, out=out[b0:b1])
    return out


def projected(ctx: ParamContext, dots, signs: np.ndarray) -> np.ndarray:
    """Host side: [tensors, dims] float64 dot products of the weights with the directions, from projections()."""
    return ctx.blocks_to_tensors((np.asarray(dots, dtype=np.float64) * signs).T).T


def direction_norms(ctx: ParamContext, pattern: np.ndarray) -> np.ndarray:
    """[layers, dims] norms of each layer's part of the directions (signs do not change them)."""
    sq = np.cumsum(np.vstack([np.zeros((1, pattern.shape[1])), pattern.astype(np.float64) ** 2]), axis=0)
    full, rest = np.divmod(ctx.numels, BLOCK)
    return np.sqrt(ctx.per_layer_sum(full[:, None] * sq[-1] + sq[rest]))


class Directions:
    """Per layer, its [dims, parameters] unit trajectory directions, made on each access (never kept)."""

    def __init__(self, ctx: ParamContext, pattern: np.ndarray, signs: np.ndarray, norms: np.ndarray):
        self.ctx, self.pattern, self.signs, self.norms = ctx, pattern, signs, norms

    def __len__(self) -> int:
        return self.ctx.n

    def __getitem__(self, layer: int) -> torch.Tensor:
        ctx = self.ctx
        first = int(np.searchsorted(ctx.layer_of, layer))
        parts = []
        for i in range(first, first + len(ctx.per_layer[layer])):
            b0, n = int(ctx.starts[i]) // BLOCK, int(ctx.numels[i])
            blocks = self.signs[b0:b0 + -(-n // BLOCK)].T[:, :, None] * self.pattern.T[:, None, :]
            parts.append(blocks.reshape(len(self.pattern.T), -1)[:, :n])
        out = torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))
        return out / torch.as_tensor(self.norms[layer], dtype=out.dtype)[:, None]
