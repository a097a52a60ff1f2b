"""A recorded step's results moved to the host: on a GPU in one non-blocking copy into pinned memory, read by
the writer thread once the copy's event has completed; on the CPU as numpy views, at once."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import torch

from tview.hooks.probes import host_shortcuts


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


class PerBlock:
    """A device tensor of per-block values that reaches the host as per-tensor values: `reduce` (host side, on
    the writer thread) turns the block values' numpy array into them. A multi-tensor reduction's per-tensor
    results cost a host allocation and a stack each time; one reduction over the flat buffer's blocks does not."""

    __slots__ = ("tensor", "reduce")

    def __init__(self, tensor: torch.Tensor, reduce):
        self.tensor, self.reduce = tensor, reduce


def _moves(v) -> bool:
    """A value the transfer moves: a tensor, or a list of 0-d tensors (None: 0), gathered without a stack op (a
    list's first value that is not None says what it holds: a list of numbers stays)."""
    if isinstance(v, (torch.Tensor, PerBlock)):
        return True
    return isinstance(v, list) and isinstance(next((t for t in v if t is not None), None), torch.Tensor)


def _first(v) -> torch.Tensor | None:
    """A moved value's tensor (a list's first one that is not None)."""
    if isinstance(v, (torch.Tensor, PerBlock)):
        return v if isinstance(v, torch.Tensor) else v.tensor
    return next((t for t in v if t is not None), None)


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
    """The tensor values of some dicts, copied to the host in one go. `slots` are (dict, key, native):
    native values (snapshots) travel as float32, the others (statistics) as float64, so counts stay exact.
    A list of 0-d tensors (None where a value is 0) arrives as one array: its values join the one cat.
    `kept` is (base, dict): views of one kept 1-D tensor `base` (the filters, in the weight copy), moved as
    the one span of `base` they lie in, in its dtype (no device copy of them is made); on the CPU's own path
    they are not copied at all (`borrows`: the writer reads `base` itself, which must then stay as it is
    until the record is written). Made on the training thread; `finish()` on the writer thread puts numpy
    arrays in place of the tensors."""

    def __init__(self, dicts: list[dict], native: tuple[dict, ...] = (), kept: tuple | None = None):
        self.slots = [(d, k, own) for ds, own in ((dicts, False), (native, True)) for d in ds
                      for k, v in d.items() if _moves(v)]
        self.groups: dict[bool, tuple] = {}
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
                    d[k] = v.reduce(cpu_to_numpy(v.tensor, own))
                    continue
                d[k] = _scalars_as_float64(v) if isinstance(v, list) and not own else cpu_to_numpy(_as_tensor(v), own)
            self.slots = []
            if base is not None:  # the writer reads the kept tensor itself (lent to it until written)
                self.span = (None, dict(views), views)
                self.borrows = True
            return
        for own in (False, True):
            part = [d[k] for d, k, o in self.slots if o == own]
            if part:
                self.groups[own] = self._copy(part, torch.float32 if own else torch.float64)
        if base is not None:
            self.span = (*self._copy_span(base, views), views)
        if firsts[0].device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record()

    @staticmethod
    def _copy(values: list, dtype: torch.dtype) -> tuple[torch.Tensor, list]:
        """One cat per dtype among the values (a cat that promotes dtypes copies input by input on a GPU: a
        kernel each), each into its span of one buffer, and one non-blocking copy into pinned memory. Per value
        (its shape, or for a list its length and where its None are; its offset in the buffer)."""
        values = [v.tensor if isinstance(v, PerBlock) else v for v in values]
        pieces = [[t.reshape(-1) for t in (v if isinstance(v, list) else [v]) if t is not None] for v in values]
        by_dtype: dict = {}
        for k, ps in enumerate(pieces):
            by_dtype.setdefault(ps[0].dtype if ps else dtype, []).append(k)
        order = [k for ks in by_dtype.values() for k in ks]
        sizes = [sum(p.numel() for p in pieces[k]) for k in range(len(values))]
        offsets = dict(zip(order, itertools.accumulate([0] + [sizes[k] for k in order])))
        device = next(p for ps in pieces for p in ps).device
        with torch.no_grad():
            flat = torch.empty(sum(sizes), dtype=dtype, device=device)
            for dt, ks in by_dtype.items():
                group = [p for k in ks for p in pieces[k]]
                if not group:
                    continue
                span = flat[offsets[ks[0]]:offsets[ks[0]] + sum(sizes[k] for k in ks)]
                if dt == dtype:
                    torch.cat(group, out=span)
                else:
                    span.copy_(group[0] if len(group) == 1 else torch.cat(group))
        host = torch.empty(flat.shape, dtype=dtype, pin_memory=device.type == "cuda")
        host.copy_(flat, non_blocking=True)
        return host, [([t is None for t in v] if isinstance(v, list) else tuple(v.shape), offsets[k])
                      for k, v in enumerate(values)]

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
        """Wait for the copy (writer thread), then put the numpy values in place."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        if self.span is not None:
            _, host_views, views = self.span
            for k, t in host_views.items():
                views[k] = as_float32(t.detach())
            self.span = None
        if not self.slots:
            return
        metas = {own: iter(self.groups[own][1]) for own in self.groups}
        arrays = {own: self.groups[own][0].numpy() for own in self.groups}
        for d, k, own in self.slots:
            shape, at = next(metas[own])
            if isinstance(d[k], PerBlock):
                n = int(np.prod(shape, dtype=np.int64))
                d[k] = d[k].reduce(arrays[own][at:at + n].reshape(shape))
            elif isinstance(shape, list):  # a list: its values, zeros where it held None
                d[k] = np.zeros(len(shape), dtype=arrays[own].dtype)
                n = len(shape) - sum(shape)
                d[k][~np.asarray(shape, dtype=bool)] = arrays[own][at:at + n]
            else:
                n = int(np.prod(shape, dtype=np.int64))
                d[k] = arrays[own][at:at + n].reshape(shape)
        self.slots = []
