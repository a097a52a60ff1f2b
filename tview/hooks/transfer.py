"""A recorded step's results moved to the host: on a GPU in one non-blocking copy into pinned memory, read by
the writer thread once the copy's event has completed; on the CPU as numpy views, at once."""

from __future__ import annotations

import numpy as np
import torch

from tview.hooks.probes import host_shortcuts

_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.int64: np.int64,
                 torch.int32: np.int32, torch.bool: np.bool_, torch.uint8: np.uint8}


def cpu_to_numpy(t: torch.Tensor, native: bool) -> np.ndarray:
    """A CPU tensor as a numpy copy: float64, or float32 for a `native` floating tensor (bf16/fp16 too)."""
    t = t.detach()
    if native:
        return t.float().numpy().copy() if t.is_floating_point() else t.numpy().copy()
    return t.to(torch.float64).numpy() if t.dtype not in (torch.float64,) else t.numpy().copy()


def _moves(v) -> bool:
    """A value the transfer moves: a tensor, or a list of 0-d tensors (None: 0), gathered without a stack op."""
    return isinstance(v, torch.Tensor) or (isinstance(v, list) and any(isinstance(t, torch.Tensor) for t in v))


def _as_tensor(v) -> torch.Tensor:
    """A list of 0-d CPU tensors (None: 0) as one tensor, a tensor as itself (the host path only)."""
    if isinstance(v, torch.Tensor):
        return v
    zero = torch.zeros((), dtype=next(t for t in v if t is not None).dtype)
    return torch.stack([zero if t is None else t for t in v])


class HostTransfer:
    """The tensor values of some dicts, copied to the host in one go. `slots` are (dict, key, native):
    native values (snapshots) travel as float32, the others (statistics) as float64, so counts stay exact.
    A list of 0-d tensors (None where a value is 0) arrives as one array: its values join the one cat.
    Made on the training thread; `finish()` on the writer thread puts numpy arrays in place of the tensors."""

    def __init__(self, dicts: list[dict], native: tuple[dict, ...] = ()):
        self.slots = [(d, k, own) for ds, own in ((dicts, False), (native, True)) for d in ds
                      for k, v in d.items() if _moves(v)]
        self.groups: dict[bool, tuple] = {}
        self.event = None
        tensors = [t for d, k, _ in self.slots for t in (d[k] if isinstance(d[k], list) else [d[k]])
                   if t is not None]
        if not tensors:
            return
        if host_shortcuts(tensors[0]) and all(t.device.type == "cpu" for t in tensors):
            for d, k, own in self.slots:  # nothing to move: numpy copies now (the tensors may change later)
                d[k] = cpu_to_numpy(_as_tensor(d[k]), own)
            self.slots = []
            return
        for own in (False, True):
            part = [d[k] for d, k, o in self.slots if o == own]
            if part:
                self.groups[own] = self._copy(part, torch.float32 if own else torch.float64)
        if tensors[0].device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record()

    @staticmethod
    def _copy(values: list, dtype: torch.dtype) -> tuple[torch.Tensor, list]:
        """One cat (dtype promotion inside the kernel) and one non-blocking copy into pinned memory. Per value
        its shape, or for a list its length and where its None are."""
        parts = [t.detach().reshape(-1) for v in values for t in (v if isinstance(v, list) else [v]) if t is not None]
        device = parts[0].device
        flat = torch.cat([torch.empty(0, dtype=dtype, device=device)] + parts)
        host = torch.empty(flat.shape, dtype=dtype, pin_memory=device.type == "cuda")
        host.copy_(flat, non_blocking=True)
        return host, [[t is None for t in v] if isinstance(v, list) else tuple(v.shape) for v in values]

    def finish(self) -> None:
        """Wait for the copy (writer thread), then put the numpy values in place."""
        if not self.slots:
            return
        if self.event is not None:
            self.event.synchronize()
        offsets = {own: 0 for own in self.groups}
        shapes = {own: iter(self.groups[own][1]) for own in self.groups}
        arrays = {own: self.groups[own][0].numpy() for own in self.groups}
        for d, k, own in self.slots:
            shape = next(shapes[own])
            if isinstance(shape, list):  # a list: its values, zeros where it held None
                d[k] = np.zeros(len(shape), dtype=arrays[own].dtype)
                n = len(shape) - sum(shape)
                d[k][~np.asarray(shape, dtype=bool)] = arrays[own][offsets[own]:offsets[own] + n]
            else:
                n = int(np.prod(shape, dtype=np.int64))
                d[k] = arrays[own][offsets[own]:offsets[own] + n].reshape(shape)
            offsets[own] += n
        self.slots = []
