"""A recorded step's results moved to the host: on a GPU in one non-blocking copy into pinned memory, read by
the writer thread once the copy's event has completed; on the CPU as numpy views, at once."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import torch

from tview.hooks.probes import host_shortcuts

POLL_SECONDS = 2e-4  # between polls of a copy's event on the writer thread


def cpu_to_numpy(t: torch.Tensor, native: bool) -> np.ndarray:
    """A CPU tensor as a numpy copy: float64, or float32 for a `native` floating tensor (bf16/fp16 too)."""
    t = t.detach()
    if native and t.is_floating_point() and t.dtype != torch.float32:
        return t.float().numpy()  # the conversion is the copy (no second one)
    if native:
        return t.numpy().copy()
    return t.to(torch.float64).numpy() if t.dtype not in (torch.float64,) else t.numpy().copy()


def as_float32(t: torch.Tensor) -> np.ndarray:
    """A host tensor as float32 numpy: a view where it is float32, else a converted copy (of this one tensor)."""
    return t.numpy() if t.dtype == torch.float32 else t.float().numpy()


class Lease:
    """A buffer the training thread keeps (the weight copy) lent to the writer thread, which writes from it
    without a copy: the training thread waits for it back before it changes the buffer."""

    def __init__(self):
        self._free = threading.Event()
        self._free.set()

    def lend(self) -> None:
        self._free.clear()

    def give_back(self) -> None:
        self._free.set()

    def wait(self, alive=lambda: True) -> None:
        """Until the buffer is back (or the writer thread, `alive()` False, is gone: nobody reads it)."""
        while not self._free.wait(1.0):
            if not alive():
                self.give_back()

    @property
    def lent(self) -> bool:
        return not self._free.is_set()


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
          torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.int8: np.int8,
          torch.uint8: np.uint8, torch.bool: np.bool_}


def _host_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a value travels in: its own, where numpy has it; else float32 (bfloat16)."""
    return dtype if dtype in _NUMPY else torch.float32


class PerBlock:
    """A device tensor of per-block values (or a list of 1-D ones, moved as their concatenation by the step's one
    cat: no op of its own) that reaches the host as per-tensor values: `reduce` (host side, on the writer thread)
    turns the block values' numpy array into them. A multi-tensor reduction's per-tensor results cost a host
    allocation and a stack each time; one reduction over the flat buffer's blocks does not."""

    __slots__ = ("tensor", "reduce")

    def __init__(self, tensor: torch.Tensor | list[torch.Tensor], reduce):
        self.tensor, self.reduce = tensor, reduce

    @property
    def parts(self) -> list[torch.Tensor]:
        return self.tensor if isinstance(self.tensor, list) else [self.tensor]

    def joined(self) -> torch.Tensor:
        """The values as one tensor (the host path: a list is concatenated there)."""
        return torch.cat([t.reshape(-1) for t in self.tensor]) if isinstance(self.tensor, list) else self.tensor


def _travel_dtype(pieces: list[torch.Tensor]) -> torch.dtype:
    """The dtype a value travels in: its pieces' dtype (promoted where a list mixes them), as numpy has it."""
    if not pieces:
        return torch.float32
    dt = pieces[0].dtype
    for other in {p.dtype for p in pieces} - {dt}:  # (promote_types is a dispatch: only where they differ)
        dt = torch.promote_types(dt, other)
    return _host_dtype(dt)


def _byte_layout(pieces: list[list[torch.Tensor]], dts: list[torch.dtype]) -> tuple[list, dict, dict, int, int]:
    """Where each value lies in the transfer's bytes: (the values copied as words, widest dtype first; the values
    cast, by dtype, each kind in its aligned span after; each value's byte offset; where the words end; the size)."""
    sizes = [sum(p.numel() for p in ps) * dt.itemsize for ps, dt in zip(pieces, dts)]
    same = sorted((k for k, ps in enumerate(pieces) if ps and all(p.dtype == dts[k] for p in ps)),
                  key=lambda k: -dts[k].itemsize)
    cast: dict[torch.dtype, list[int]] = {}
    for k in sorted(set(k for k, ps in enumerate(pieces) if ps) - set(same)):
        cast.setdefault(dts[k], []).append(k)
    where, at = {}, 0
    for k in same:  # widest first: each value's offset is a multiple of its width
        where[k], at = at, at + sizes[k]
    end = at
    for ks in cast.values():
        at = -(-at // 8) * 8
        for k in ks:
            where[k], at = at, at + sizes[k]
    return same, cast, where, end, at


def _words(t: torch.Tensor, word: torch.dtype) -> torch.Tensor:
    """A 1-D tensor's bits as words of dtype `word`: itself, or a view (a strided tensor of wider values copied
    first; one of at most one value viewed with stride 1). A copy moves bits as they are, floats' too."""
    if t.dtype == word:
        return t
    if t.numel() <= 1:
        t = t.as_strided((t.numel(),), (1,))
    elif t.element_size() != word.itemsize and not t.is_contiguous():
        t = t.contiguous()
    return t.view(word)


def _moves(v) -> bool:
    """A value the transfer moves: a tensor, or a list of 0-d tensors (None: 0), gathered without a stack op (a
    list's first value that is not None says what it holds: a list of numbers stays)."""
    if isinstance(v, (torch.Tensor, PerBlock)):
        return True
    return isinstance(v, list) and isinstance(next((t for t in v if t is not None), None), torch.Tensor)


def _first(v) -> torch.Tensor | None:
    """A moved value's tensor (a list's first one that is not None)."""
    if isinstance(v, (torch.Tensor, PerBlock)):
        return v if isinstance(v, torch.Tensor) else v.parts[0]
    return next((t for t in v if t is not None), None)


def _shape(v, per_block: bool) -> tuple | list:
    """How a moved value comes back: a tensor's shape (a PerBlock's parts: their total length), or for a list of
    0-d tensors where its None are."""
    if per_block:
        return tuple(v[0].shape) if len(v) == 1 else (sum(t.numel() for t in v),)
    return [t is None for t in v] if isinstance(v, list) else tuple(v.shape)


def _as_tensor(v) -> torch.Tensor:
    """A list of 0-d CPU tensors (None: 0) as one tensor, a tensor as itself (the host path only)."""
    if isinstance(v, torch.Tensor):
        return v
    zero = torch.zeros((), dtype=next(t for t in v if t is not None).dtype)
    return torch.stack([zero if t is None else t for t in v])


def _scalars_as_float64(v: list) -> np.ndarray:
    """A list of 0-d CPU tensors (None: 0) as float64 numpy, value by value (a stack op costs more for a few dozen)."""
    return np.array([0.0 if t is None else float(t) for t in v], dtype=np.float64)


class HostTransfer:
    """The tensor values of some dicts, copied to the host in one go. `slots` are (dict, key, native): each
    value travels in its own dtype and arrives as numpy, native values (snapshots) as float32, the others
    (statistics) as float64. A list of 0-d tensors (None where a value is 0) arrives as one array.
    `kept` is (base, dict): views of one kept 1-D tensor `base` (the filters, in the weight copy), moved as
    the one span of `base` they lie in, in its dtype (no device copy of them is made); on the CPU's own path
    they are not copied at all (`borrows`: the writer reads `base` itself, which must then stay as it is
    until the record is written). Made on the training thread; `finish()` on the writer thread puts numpy
    arrays in place of the tensors."""

    def __init__(self, dicts: list[dict], native: tuple[dict, ...] = (), kept: tuple | None = None):
        self.slots = [(d, k, own) for ds, own in ((dicts, False), (native, True)) for d in ds
                      for k, v in d.items() if _moves(v)]
        self.moved = None  # (host bytes, per slot (shape, dtype, byte offset)) once copied
        self.event = None
        self.borrows = False
        self.span = None  # (host copy of the kept span, {key: host view}, the kept dict)
        base, views = kept if kept is not None and kept[1] else (None, {})
        firsts = [_first(d[k]) for d, k, _ in self.slots] + [base]  # a list's tensors share a device (one per slot)
        firsts = [t for t in firsts if t is not None]
        if not firsts:
            return
        if host_shortcuts(firsts[0]) and all(t.device.type == "cpu" for t in firsts):
            for d, k, own in self.slots:  # nothing to move: numpy copies now (the tensors may change later)
                v = d[k]
                if isinstance(v, PerBlock):
                    d[k] = v.reduce(cpu_to_numpy(v.joined(), own))
                    continue
                d[k] = _scalars_as_float64(v) if isinstance(v, list) and not own else cpu_to_numpy(_as_tensor(v), own)
            self.slots = []
            if base is not None:  # the writer reads the kept tensor itself (lent to it until written)
                self.span = (None, dict(views), views)
                self.borrows = True
            return
        self.moved = self._copy([d[k] for d, k, _ in self.slots])
        if base is not None:
            self.span = (*self._copy_span(base, views), views)
        if firsts[0].device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record()

    @staticmethod
    def _copy(values: list) -> tuple[torch.Tensor, list]:
        """Every value in the dtype it travels in (_travel_dtype) in one byte buffer, by one cat: the values, widest
        dtype first (each stays aligned), viewed as words of the narrowest one's dtype (a cat that promotes dtypes
        copies input by input on a GPU: a kernel each; a copy moves bits as they are). A value that must change
        dtype (bfloat16, which numpy lacks; a list that mixes dtypes) goes by a cat of its kind, cast as copied.
        Then one non-blocking copy of the buffer into pinned memory. Returns (the host bytes, per value (its shape,
        or for a list its length and where its None are; its dtype; its byte offset))."""
        blocks = [isinstance(v, PerBlock) for v in values]
        values = [v.parts if isinstance(v, PerBlock) else v for v in values]
        pieces = [[t if t.dim() == 1 else t.reshape(-1) for t in (v if isinstance(v, list) else [v]) if t is not None]
                  for v in values]  # (a reshape of a 1-D tensor is still a view op: host time on a GPU)
        dts = [_travel_dtype(ps) for ps in pieces]
        same, cast, where, end, total = _byte_layout(pieces, dts)
        device = next(p for ps in pieces for p in ps).device
        with torch.no_grad():
            flat = torch.empty(total, dtype=torch.uint8, device=device)
            if same:
                word = dts[same[-1]]  # the narrowest values' own dtype: those need no view (bool: bytes, as a
                word = torch.uint8 if word == torch.bool else word  # bool kernel may copy any nonzero byte as 1)
                words = [_words(p, word) for k in same for p in pieces[k]]
                span = flat[:end].view(word)
                torch.cat(words, out=span) if len(words) > 1 else span.copy_(words[0])
            for dt, ks in cast.items():
                group = [p for k in ks for p in pieces[k]]
                lo = where[ks[0]]
                span = flat[lo:lo + sum(p.numel() for p in group) * dt.itemsize].view(dt)
                span.copy_(group[0] if len(group) == 1 else torch.cat(group))
        host = torch.empty(total, dtype=torch.uint8, pin_memory=device.type == "cuda")
        host.copy_(flat, non_blocking=True)
        metas = [(_shape(v, blocks[k]), dts[k], where.get(k, 0)) for k, v in enumerate(values)]
        return host, metas

    @staticmethod
    def _copy_span(base: torch.Tensor, views: dict) -> tuple[torch.Tensor, dict]:
        """The part of `base` the views lie in, in one non-blocking copy into pinned memory (no device
        temporary), and each view's place in it (same shape and strides: a transposed view stays one)."""
        offsets = {k: v.storage_offset() - base.storage_offset() for k, v in views.items()}
        lo = min(offsets.values())
        hi = max(o + sum((n - 1) * s for n, s in zip(v.shape, v.stride())) + 1 if v.numel() else o
                 for o, v in zip(offsets.values(), views.values()))
        host = torch.empty(max(hi - lo, 0), dtype=base.dtype, pin_memory=base.device.type == "cuda")
        host.copy_(base[lo:hi], non_blocking=True)
        return host, {k: host.as_strided(v.shape, v.stride(), offsets[k] - lo) for k, v in views.items()}

    def finish(self) -> None:
        """Wait for the copy (writer thread), then put the numpy values in place. The wait polls the event and sleeps
        between polls: CUDA's own synchronize spins a CPU core the training job's data loaders may want (the copy is
        nearly always done: the writer gathers a second of records first)."""
        if self.event is not None:
            while not self.event.query():
                time.sleep(POLL_SECONDS)
            self.event = None
        if self.span is not None:
            _, host_views, views = self.span
            for k, t in host_views.items():
                views[k] = as_float32(t.detach())
            self.span = None
        if not self.slots:
            return
        host, metas = self.moved
        raw = host.numpy()
        for (d, k, own), (shape, dt, at) in zip(self.slots, metas):
            out = np.float32 if own else np.float64  # snapshots as float32; statistics as float64 (exact counts)
            n = len(shape) - sum(shape) if isinstance(shape, list) else math.prod(shape)
            values = raw[at:at + n * dt.itemsize].view(_NUMPY[dt]).astype(out, copy=False)  # a view where it is
            if isinstance(d[k], PerBlock):
                d[k] = d[k].reduce(values.reshape(shape))
            elif isinstance(shape, list):  # a list: its values, zeros where it held None
                d[k] = np.zeros(len(shape), dtype=out)
                d[k][~np.asarray(shape, dtype=bool)] = values
            else:
                d[k] = values.reshape(shape)
        self.slots, self.moved = [], None
