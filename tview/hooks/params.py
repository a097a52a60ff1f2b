"""Per-parameter-tensor reductions of every recorded layer's weights and gradients, in a few multi-tensor
ops for the whole model, with no host sync and no parameter-sized scratch: what parameter probes compute with.

Memory: one kept copy of the weights (flat, padded to blocks, in the parameters' dtype: the previous
recorded step's weights for the update ratio, and a contiguous image of the current ones for block
reductions) and the initial weights in float16 with a power-of-two scale per parameter tensor (half a float32
copy; init_distance is exact to about 3e-4 of |W0|). Float32 parameters: the copy is also the scratch of a
recorded step (gradients copied in, reduced, the weights copied back); other dtypes: one reused float32
chunk of max(2M elements, a quarter of the parameters). Every parameter tensor starts at a multiple of
BLOCK elements in the flat layouts, so a [blocks, BLOCK] view reduces per block in one op and blocks sum
to parameters with one segment_reduce (precomputed offsets, unsafe=True: nothing read back).
Per-parameter results are summed per layer on the host, in finalize, on the writer thread.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import cached_property

import numpy as np
import torch

from tview.store import schema

FORCE_DEVICE_PATH = os.environ.get("TVIEW_FORCE_DEVICE_PATH") == "1"
BLOCK = 256  # elements per block; parameter tensors start on a block boundary in the flat layouts
CHUNK_MIN = 1 << 21  # elements of the reused float32 chunk, at least (or the whole model if smaller)
CHUNK_SHARE = 4  # the chunk holds at least 1/CHUNK_SHARE of the parameters: at most that many chunks
HIST_WIDTH = schema.HIST_BINS + 1  # a histogram row per parameter tensor: the bins, then NaN
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


def hist_boundaries(device) -> torch.Tensor:
    """Float32 boundaries for torch.bucketize(right=True): the count of boundaries <= x is x's bin in the
    fixed signed-log histogram (exact zeros alone in the middle bin, +-Inf in the outermost ones once
    mapped to +-3e38); the last boundary, +Inf, sends NaN (never <= anything) to the spare bin HIST_BINS."""
    k = schema.HIST_HALF
    mags = 10.0 ** (schema.HIST_LO + np.arange(1, k) / schema.HIST_PER_DECADE)
    edges = np.concatenate([-mags[::-1], [0.0, np.nextafter(np.float32(0), np.float32(1))], mags, [np.inf]])
    return torch.tensor(edges, dtype=torch.float32, device=device)


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
        self.use_copy = self.copy_dtype == torch.float32  # the weight copy doubles as the scratch buffer
        self.keeps_weights = False  # set by the probes that read the copy's weights (setup, or first use)
        self.wants_grads = False  # set by the probes that read gradient statistics
        self.copy_state = "dirty"  # "weights" (the last gathered, padding zero), "clean" (padding zero), "dirty"
        self.gathered = False  # the copy has held weights: an update can be measured against them
        self._set_layout([p.numel() for p in local])
        dims = [None if d is False else 0 if d is True else d for d in (channel_dims or [None] * self.n)]
        self._set_channels(local, dims, groups)
        self._blocks3 = torch.zeros(3, self.nblocks, dtype=torch.float32, device=self.device)  # reused
        self._blocks3_counted = False
        for constant in ("channel_segments", "_boundaries", "_hist_base", "_padding", "_one"):
            getattr(self, constant)  # made now: a host-to-device copy on a recorded step would wait

    # -- layout -------------------------------------------------------------------------------
    def local_params(self) -> list[torch.Tensor]:
        """The parameter tensors as this rank holds them (FSDP2: each DTensor's local shard)."""
        return [local_tensor(p) for p in self.params] if self.is_sharded else self.params

    def _set_layout(self, numels: list[int]):
        self.numels = np.asarray(numels, dtype=np.int64)
        blocks = -(-self.numels // BLOCK)
        self.starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64) * BLOCK
        self.padding = blocks * BLOCK - self.numels  # zeros after each tensor, counted in no statistic
        self.nblocks = int(blocks.sum())
        self.total = self.nblocks * BLOCK
        self.block_param = np.repeat(np.arange(len(numels)), blocks)
        offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(blocks)]), device=self.device)
        self._block_offsets = offsets
        self._block_offsets3 = offsets.expand(3, -1).contiguous()
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
    def padding_views(self) -> list[list[torch.Tensor]]:
        """Per chunk, views of the chunk buffer where no parameter lies (padding)."""
        out = []
        for c, (b0, b1) in enumerate(self.chunks):
            ends = [(off, off + b - a) for _, a, b, off in self.pieces[c]]
            gaps, at = [], 0
            for lo, hi in ends + [((b1 - b0) * BLOCK, None)]:
                if lo > at:
                    gaps.append(self.chunk[at:lo])
                at = hi if hi is not None else at
            out.append(gaps)
        return out

    @cached_property
    def copy(self) -> torch.Tensor:
        """The kept flat copy of the weights (zero padding), in the parameters' dtype."""
        return torch.zeros(self.total, dtype=self.copy_dtype, device=self.device)

    @cached_property
    def copy_views(self) -> list[torch.Tensor]:
        return [self.copy[s:s + n].view(p.shape) for s, n, p in zip(self.starts, self.numels, self.local_params())]

    @cached_property
    def _boundaries(self) -> torch.Tensor:
        return hist_boundaries(self.device)

    @cached_property
    def _hist_base(self) -> torch.Tensor:
        """Per block, the first histogram cell of its parameter tensor (int32)."""
        return torch.as_tensor(self.block_param * HIST_WIDTH, dtype=torch.int32, device=self.device)

    @cached_property
    def _one(self) -> torch.Tensor:
        return torch.ones(1, dtype=torch.float64, device=self.device)

    # -- reductions ---------------------------------------------------------------------------
    def combine(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Under FSDP2, `t` (partials of this rank's shards) summed (or maxed) over the ranks, in place."""
        if self.is_sharded and torch.distributed.is_initialized():
            reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
            torch.distributed.all_reduce(t, op=reduce_op)
        return t

    def _spread(self, values: list[torch.Tensor], which: list[int]) -> torch.Tensor:
        """[parameter tensors] float32: `values` (0-d, one per index in `which`) in place, zeros elsewhere."""
        if len(which) == len(self.params):
            return torch.stack(values)
        out = torch.zeros(len(self.params), dtype=torch.float32, device=self.device)
        if which:
            out.index_copy_(0, self._index(tuple(which)), torch.stack(values))
        return out

    def spread(self, vector: torch.Tensor, which: list[int]) -> torch.Tensor:
        """[parameter tensors]: `vector` (one value per index in `which`) in place, zeros elsewhere."""
        if len(which) == len(self.params):
            return vector
        out = torch.zeros(len(self.params), dtype=vector.dtype, device=self.device)
        return out.index_copy_(0, self._index(tuple(which)), vector) if which else out

    def _index(self, which: tuple[int, ...]) -> torch.Tensor:
        """A device index tensor, kept per subset (a subset changes rarely: frozen layers)."""
        cache = self.__dict__.setdefault("_indices", {})
        if which not in cache:
            cache[which] = torch.as_tensor(which, dtype=torch.int64, device=self.device)
        return cache[which]

    def powsums(self, tensors: list[torch.Tensor | None], power: float = 2) -> torch.Tensor:
        """[parameter tensors] float32 sums of |value| ** power (0 for None), one multi-tensor op."""
        which = [i for i, t in enumerate(tensors) if t is not None]
        return self._spread(torch._foreach_powsum([tensors[i] for i in which], power, dtype=torch.float32)
                            if which else [], which)

    def sq_sums(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """[parameter tensors] float32 sums of squares (0 for None), one multi-tensor op."""
        return self.powsums(tensors, 2)

    def max_abs(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """[parameter tensors] float32 largest |value| (0 for None or empty: inf-norm has no identity)."""
        which = [i for i in self.nonempty if tensors[i] is not None]
        norms = torch._foreach_norm([tensors[i] for i in which], float("inf"), dtype=torch.float32) if which else []
        return self._spread(norms, which)

    def load_chunk(self, c: int, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """Chunk `c` of `tensors` (one per parameter; None: zeros) in the float32 chunk, padding zero."""
        b0, b1 = self.chunks[c]
        buf = self.chunk[:(b1 - b0) * BLOCK]
        complete = all(tensors[i] is not None for i, *_ in self.pieces[c])
        if not (self.use_copy and self.copy_state != "dirty" and complete):  # else padding zero, the rest written
            buf.zero_()
        self.copy_state = "clean" if self.use_copy else self.copy_state
        dst, src = [], []
        for i, a, b, off in self.pieces[c]:
            if tensors[i] is not None:
                dst.append(buf[off:off + b - a])
                src.append(tensors[i].reshape(-1)[a:b])
        if src:
            torch._foreach_copy_(dst, src)
        return buf

    def copy_chunk(self, c: int) -> torch.Tensor:
        """Chunk `c` of the kept weight copy, as float32 in the chunk buffer (the copy itself when float32:
        writing to it leaves it scratch)."""
        b0, b1 = self.chunks[c]
        if self.use_copy:
            self.copy_state = "dirty"  # a histogram overwrites it, padding included
            return self.copy
        buf = self.chunk[:(b1 - b0) * BLOCK]
        buf.copy_(self.copy[b0 * BLOCK:b1 * BLOCK])
        return buf

    def put_weights(self, weights: list[torch.Tensor]) -> None:
        """The kept copy := `weights`, padding zero."""
        if self.copy_state == "dirty":
            self.copy.zero_()
        torch._foreach_copy_(self.copy_views, weights)
        self.copy_state = "weights"

    def row_ranges(self, b0: int, b1: int):
        """[b0, b1) in one piece on a device (its reductions cast as they load), in CPU_ROWS pieces on the
        CPU's own path (bounded scratch for the cast)."""
        step = b1 - b0 if self.device.type != "cpu" or FORCE_DEVICE_PATH else CPU_ROWS
        return [(r, min(r + step, b1)) for r in range(b0, b1, max(step, 1))]

    def block_stats(self, tensors: list[torch.Tensor | None], nonfinite: bool) -> torch.Tensor:
        """[3, tensors] float32: sums, NaN counts and Inf counts per tensor (zeros for the counts when
        `nonfinite` is False)."""
        blocks = self._blocks3
        if not nonfinite and self._blocks3_counted:  # counts of an earlier step: none this time
            blocks[1:].zero_()
            self._blocks3_counted = False
        for c, (b0, b1) in enumerate(self.chunks):
            x = self.load_chunk(c, tensors).view(-1, BLOCK)
            torch.sum(x, 1, out=blocks[0, b0:b1])
            for r0, r1 in self.row_ranges(b0, b1) if nonfinite else []:
                part = x[r0 - b0:r1 - b0]
                torch.sum(torch.isnan(part), 1, dtype=torch.float32, out=blocks[1, r0:r1])
                torch.sum(torch.isinf(part), 1, dtype=torch.float32, out=blocks[2, r0:r1])
                self._blocks3_counted = True
        return torch.segment_reduce(blocks, "sum", offsets=self._block_offsets3, axis=1, unsafe=True)

    def copy_sums64(self) -> torch.Tensor:
        """[tensors] float64 sums of the kept weight copy (float64 accumulation: deterministic, the same
        weights give the same bits)."""
        if self.host and self.copy_dtype in (torch.float32, torch.float16):  # numpy casts in small buffers
            blocks = np.add.reduce(self.copy.numpy().reshape(-1, BLOCK), axis=1, dtype=np.float64)
            return torch.from_numpy(np.add.reduceat(blocks, self._block_starts) * (self.numels > 0))
        blocks = torch.sum(self.copy.view(-1, BLOCK), 1, dtype=torch.float64)  # a GPU casts as it loads
        return torch.segment_reduce(blocks, "sum", offsets=self._block_offsets, unsafe=True)

    @cached_property
    def _block_starts(self) -> np.ndarray:
        """Each tensor's first block, clipped for reduceat (an empty tensor's entry is zeroed after)."""
        return np.minimum(self._block_offsets.cpu().numpy()[:-1], max(self.nblocks - 1, 0))

    def _histogram_chunk(self, buf: torch.Tensor, b0: int, b1: int, table: torch.Tensor) -> None:
        self.copy_state = "dirty" if self.use_copy else self.copy_state
        buf.nan_to_num_(nan=float("nan"), posinf=3e38, neginf=-3e38)
        idx = buf.view(torch.int32)  # the bin index overwrites the value it comes from, element by element
        torch.bucketize(buf, self._boundaries, out_int32=True, right=True, out=idx)
        idx.view(-1, BLOCK).add_(self._hist_base[b0:b1, None])
        table.index_add_(0, idx, self._one.expand(idx.numel()))

    def histogram(self, tensors: list[torch.Tensor | None] | None) -> torch.Tensor:
        """[tensors * HIST_WIDTH] float64 counts (padding included in the zero bin: see hist_rows);
        `tensors` None: the kept weight copy."""
        table = torch.zeros(len(self.params) * HIST_WIDTH, dtype=torch.float64, device=self.device)
        for c, (b0, b1) in enumerate(self.chunks):
            buf = self.copy_chunk(c) if tensors is None else self.load_chunk(c, tensors)
            self._histogram_chunk(buf, b0, b1, table)
        table.view(-1, HIST_WIDTH)[:, schema.HIST_HALF].sub_(self._padding)  # padding zeros are no values
        return table

    @cached_property
    def _padding(self) -> torch.Tensor:
        return torch.as_tensor(self.padding, dtype=torch.float64, device=self.device)

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
        return torch.cat(out)

    # -- host side (finalize) -----------------------------------------------------------------
    def per_layer_sum(self, per_param) -> np.ndarray:
        """[layers, ...] float64 sums of per-parameter-tensor values (leading axis: tensors)."""
        v = np.asarray(per_param, dtype=np.float64)
        out = np.zeros((self.n,) + v.shape[1:])
        np.add.at(out, self.layer_of, v)
        return out

    def per_layer_max(self, per_param) -> np.ndarray:
        out = np.full(self.n, -np.inf)
        np.fmax.at(out, self.layer_of, np.asarray(per_param, dtype=np.float64))
        return out

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

    `local`: a float32 tensor [parameter tensors] of squared local-gradient norms (a DDP comm hook's), or a
    list of local gradients per parameter tensor (None where there is none), or None."""

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
        multi-tensor op squares the norms of that update, of the weights and of the gradients; the gradients
        go through the scratch for their sums and NaN/Inf counts; the copy takes W (and its float64 sums)."""
        ctx, w, g, n = self.ctx, self.weights, self.grads, len(self.ctx.params)
        have = [i for i, t in enumerate(g) if t is not None] if grads else []
        with torch.no_grad():
            update = weights and ctx.gathered and ctx.copy_state == "weights"
            if update:
                torch._foreach_sub_(ctx.copy_views, w)
                ctx.copy_state = "clean"
            tensors = (ctx.copy_views if update else []) + (w if weights else []) + [g[i] for i in have]
            sq = ctx.combine(torch.stack(torch._foreach_powsum(tensors, 2, dtype=torch.float32)))
            out, k = {}, n if update else 0
            if grads:
                out["grads"] = self._grad_pass(ctx.spread(sq[k + (n if weights else 0):], have))
            if weights:
                ctx.put_weights(w)
                ctx.gathered = True
                out["weights"] = {"sq": sq[k:k + n], "sum": ctx.combine(ctx.copy_sums64())}
                if update:
                    out["weights"]["dsq"] = sq[:n]
        return out

    def _grad_pass(self, sq: torch.Tensor) -> dict:
        ctx = self.ctx
        finite = ctx.host and bool(torch.isfinite(sq.sum()))  # CPU only: a finite total means no NaN or Inf
        stats = ctx.combine(ctx.block_stats(self.grads, nonfinite=not finite))
        return {"sq": sq, "max_abs": ctx.combine(ctx.max_abs(self.grads), "max"), "sum": stats[0], "nan": stats[1],
                "inf": stats[2]}

    @contextmanager
    def scratch(self):
        """Around a use of ctx.chunk: when that is the weight copy, the copy first takes this step's weights
        (and the update is measured), and gets them back after."""
        keep = self.ctx.use_copy and self.ctx.keeps_weights
        if keep:
            self.weight_stats  # noqa: B018
        with torch.no_grad():
            yield
            if keep:
                self.ctx.put_weights(self.weights)

    @cached_property
    def local(self) -> tuple[torch.Tensor, np.ndarray] | None:
        """([parameter tensors] squared local-gradient norms, NaN where a tensor had none; [layers] measured:
        those with a trainable tensor), or None. `local` may also be a list of local gradients (None: none)."""
        loc = self._local
        if loc is None or (not isinstance(loc, torch.Tensor) and all(t is None for t in loc)):
            return None
        if isinstance(loc, torch.Tensor):
            return loc, self.ctx.present([p.requires_grad for p in self.ctx.params])
        with torch.no_grad():
            sq = self.ctx.sq_sums([local_tensor(t) for t in loc])
        return sq, self.ctx.present([t is not None for t in loc])


def fp16_image(ctx: ParamContext) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The weights now, compact: (flat float16 image W / s, per block -s, [tensors] exact |W|^2 on the host),
    s a power of two per tensor that keeps |W / s| <= 2**15."""
    w = ctx.local_params()
    with torch.no_grad():
        peak = ctx.combine(ctx.max_abs(w), "max").clamp(min=1e-30)
        scale = torch.exp2(torch.ceil(torch.log2(peak)) - 15)
        image = torch.zeros(ctx.total, dtype=torch.float16, device=ctx.device)
        for i in ctx.nonempty:
            s, n, flat = int(ctx.starts[i]), int(ctx.numels[i]), w[i].reshape(-1)
            for a in range(0, n, 1 << 18):  # in pieces: a division into float16 makes a float32 temporary
                b = min(a + (1 << 18), n)
                torch.div(flat[a:b], scale[i], out=image[s + a:s + b])
        neg_scale = -scale[torch.as_tensor(ctx.block_param, device=ctx.device)]
        sq = ctx.combine(ctx.sq_sums(w)).double().cpu().numpy()
    return image, neg_scale, sq


def copy_minus_image(ctx: ParamContext, image: torch.Tensor, neg_scale: torch.Tensor, weights) -> torch.Tensor:
    """[tensors] squared distances |W - W0|^2, W being the kept copy (restored from `weights` after)."""
    with torch.no_grad():
        rows, image_rows = ctx.copy.view(-1, BLOCK), image.view(-1, BLOCK)
        for r0, r1 in ctx.row_ranges(0, ctx.nblocks):  # a CPU casts the float16 rows in a temporary
            rows[r0:r1].addcmul_(image_rows[r0:r1], neg_scale[r0:r1, None])
        dsq = ctx.combine(ctx.sq_sums(ctx.copy_views))
        torch._foreach_copy_(ctx.copy_views, weights)
    return dsq


def unit_chunk_directions(ctx: ParamContext, seed: int, dim: int, c: int, into: torch.Tensor | None = None):
    """Chunk `c` of trajectory direction `dim` (unnormalised, N(0, 1) values) in the chunk buffer (or
    `into`), drawn from a generator seeded by (seed, dim, chunk): the same on every rank and resumed run."""
    b0, b1 = ctx.chunks[c]
    g = torch.Generator(device=ctx.device)
    g.manual_seed((seed * 1_000_003 + dim * 10_007 + c) % (1 << 63))
    if into is None:
        into = ctx.chunk
        ctx.copy_state = "dirty" if ctx.use_copy else ctx.copy_state
    return into[:(b1 - b0) * BLOCK].normal_(generator=g)


def projections(ctx: ParamContext, seed: int, dims: int, weights: list[torch.Tensor]) -> torch.Tensor:
    """[dims, tensors] dot products of `weights` with each direction (the padding zeroed)."""
    blocks = torch.zeros(dims, ctx.nblocks, dtype=torch.float32, device=ctx.device)
    for d in range(dims):
        for c, (b0, b1) in enumerate(ctx.chunks):
            buf = unit_chunk_directions(ctx, seed, d, c)
            if ctx.padding_views[c]:
                torch._foreach_zero_(ctx.padding_views[c])
            pieces = ctx.pieces[c]
            torch._foreach_mul_([buf[off:off + b - a] for _, a, b, off in pieces],
                                [weights[i].reshape(-1)[a:b] for i, a, b, _ in pieces])
            torch.sum(buf.view(-1, BLOCK), 1, out=blocks[d, b0:b1])
    return torch.segment_reduce(blocks, "sum", offsets=ctx._block_offsets.expand(dims, -1).contiguous(),
                                axis=1, unsafe=True)


def _direction_pieces(ctx: ParamContext, seed: int, dims: int, wanted: set[int] | None = None):
    """Yield (direction, parameter tensor, first element, end element, values) for every piece of the
    directions (of the tensors in `wanted`, or all), drawn chunk by chunk as projections() draws them."""
    if wanted is None and ctx.use_copy and not ctx.gathered:  # setup: the copy holds nothing yet
        into, ctx.copy_state = ctx.copy, "dirty"
    else:  # not the chunk: it may hold weights
        into = torch.empty(ctx.chunk_blocks * BLOCK, device=ctx.device)
    for d in range(dims):
        for c in range(len(ctx.chunks)):
            buf = unit_chunk_directions(ctx, seed, d, c, into)
            for i, a, b, off in ctx.pieces[c]:
                if wanted is None or i in wanted:
                    yield d, i, a, b, buf[off:off + b - a]


def direction_norms(ctx: ParamContext, seed: int, dims: int) -> np.ndarray:
    """[layers, dims] norms of each layer's part of the directions (setup: one small op per piece)."""
    sq = np.zeros((len(ctx.params), dims))
    for d, i, _, _, values in _direction_pieces(ctx, seed, dims):
        sq[i, d] += float(torch._foreach_powsum([values], 2)[0])  # no temporary
    return np.sqrt(ctx.per_layer_sum(sq))


class Directions:
    """Per layer, its [dims, parameters] unit trajectory directions, drawn again on each access (never kept)."""

    def __init__(self, ctx: ParamContext, seed: int, dims: int, norms: np.ndarray):
        self.ctx, self.seed, self.dims, self.norms = ctx, seed, dims, norms

    def __len__(self) -> int:
        return self.ctx.n

    def __getitem__(self, layer: int) -> torch.Tensor:
        ctx = self.ctx
        first = int(np.searchsorted(ctx.layer_of, layer))
        tensors = list(range(first, first + len(ctx.per_layer[layer])))
        parts = {i: torch.empty(self.dims, int(ctx.numels[i]), device=ctx.device) for i in tensors}
        for d, i, a, b, values in _direction_pieces(ctx, self.seed, self.dims, set(tensors)):
            parts[i][d, a:b] = values
        out = torch.cat([parts[i] for i in tensors], dim=1)
        return out / torch.as_tensor(self.norms[layer], dtype=out.dtype, device=out.device)[:, None]
