"""Counts the ops (kernel launches, as a proxy) that code dispatches, and the ones among them that make the
host wait for a GPU: measured on any machine, through the device code path (TVIEW_FORCE_DEVICE_PATH=1). Also
the host's share: every dispatch, view ops too (each costs 1-3 us of host time on a GPU), and the tensors passed."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that launch no kernel: they only make a new view of the same memory, or allocate without writing.
METADATA_ONLY = {
    "view", "_unsafe_view", "reshape", "_reshape_alias", "slice", "select", "detach", "alias", "expand",
    "as_strided", "t", "transpose", "permute", "unsqueeze", "squeeze", "split", "split_with_sizes", "unbind",
    "narrow", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
    "_to_copy_meta", "view_as", "unflatten", "flatten", "_unsafe_split", "is_same_size", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "_has_compatible_shallow_copy_type", "set_",
    "resize_", "record_stream", "is_pinned", "_pin_memory", "pin_memory", "_nested_tensor_from_mask",
}

# Ops that read a device value back on the host (the host waits for the GPU), whatever their arguments.
ALWAYS_SYNC = {
    "_local_scalar_dense", "nonzero", "masked_select", "bincount", "unique", "_unique", "_unique2",
    "unique_dim", "unique_consecutive", "equal", "is_nonzero", "allclose", "masked_scatter", "_assert_async",
    "argwhere",
}


def _name(func) -> str:
    return func.overloadpacket.__name__


def _syncs(func, args, kwargs) -> bool:
    """True when this call would make the host wait for a GPU (see PLATFORM.md's list)."""
    name = _name(func)
    if name in ALWAYS_SYNC:
        return True
    if name == "segment_reduce":  # lengths are checked on the host unless offsets come with unsafe=True
        return not kwargs.get("unsafe", False) or kwargs.get("offsets") is None
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and len(args) < 3
    if name == "histc":
        lo = args[2] if len(args) > 2 else kwargs.get("min", 0)
        hi = args[3] if len(args) > 3 else kwargs.get("max", 0)
        return lo == hi
    if name == "index" and len(args) > 1:
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
    if name in ("copy_", "_to_copy", "_copy_from"):
        return _blocking_transfer(args, kwargs)
    return False


def _blocking_transfer(args, kwargs) -> bool:
    tensors = [a for a in args[:2] if isinstance(a, torch.Tensor)]
    devices = {t.device.type for t in tensors} | ({torch.device(kwargs["device"]).type}
                                                   if kwargs.get("device") is not None else set())
    return len(devices) > 1 and not kwargs.get("non_blocking", args[2] if len(args) > 2 else False)


def _tensor_inputs(args) -> list[torch.Tensor]:
    """The tensors among a call's arguments, lists' elements too."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, torch.Tensor))
    return out


def _launches(name: str, args) -> int:
    """Kernels an op launches on a GPU, as counted here: 1, but a cat of inputs whose dtypes differ, which CUDA
    runs as a copy per input (its batched kernel takes one dtype)."""
    if name == "cat" and args and isinstance(args[0], (list, tuple)):
        dtypes = {t.dtype for t in args[0] if isinstance(t, torch.Tensor) and t.numel()}
        return len(args[0]) if len(dtypes) > 1 else 1
    return 1


class OpCounter(TorchDispatchMode):
    """`with OpCounter() as c: ...`: c.ops (ops that launch work; a cat that promotes dtypes, one per input),
    c.syncs (those that make the host wait for a GPU), c.by_name (a Counter of op names), c.sync_names; the
    host's share: c.calls (every dispatch, view ops too) and c.tensors (tensors passed to them). Counts this
    thread's dispatches only."""

    def __init__(self):
        super().__init__()
        self.ops = self.syncs = self.calls = self.tensors = 0
        self.by_name: Counter = Counter()
        self.sync_names: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        self.calls += 1
        self.tensors += len(_tensor_inputs(args))
        if name not in METADATA_ONLY:
            n = _launches(name, args)
            self.ops += n
            self.by_name[name if n == 1 else "cat (dtypes differ: a copy per input)"] += n
            if _syncs(func, args, kwargs):
                self.syncs += 1
                self.sync_names[name] += 1
        return func(*args, **kwargs)
