"""The scalars of a recorded step: the user's (checked, refused by name when they cannot be stored or clash with
tview's own) and tview's own (timings, examples, memory)."""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import torch

from tview.errors import ConfigError
from tview.store import schema

BUILTIN_SCALARS = ("step_time", "busy_time", "wait_time", "after_step_time", "cpu_wait_time", "examples",
                   "examples_per_sec", "host_rss_bytes", "cuda_allocated_bytes", "cuda_max_allocated_bytes",
                   "optimizer_skipped", "tview_time", "tview_writer_cpu", "tview_stride", "lr")


def is_builtin_scalar(name: str) -> bool:
    return name in BUILTIN_SCALARS or re.fullmatch(r"lr/\d+", name) is not None


_STATM = {"fd": None, "pid": None}


def host_rss_bytes() -> float:
    """Resident memory of this process (Linux: /proc/self/statm, kept open; elsewhere: the peak)."""
    try:
        if _STATM["pid"] != os.getpid():  # opened by this process (a forked child reopens its own)
            _STATM["fd"] = os.open("/proc/self/statm", os.O_RDONLY)
            _STATM["page"], _STATM["pid"] = os.sysconf("SC_PAGE_SIZE"), os.getpid()
        return float(os.pread(_STATM["fd"], 128, 0).split()[1]) * _STATM["page"]
    except (OSError, ValueError, IndexError):
        import resource
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


_SCHEDSTAT = {"key": None, "fd": -1}


def cpu_wait_seconds() -> float | None:
    """Seconds the calling thread has waited, runnable, for a CPU (Linux: the run-queue time in
    /proc/thread-self/schedstat, the file kept open for the thread that asks); None where the kernel does not
    say. A rank made slow by other processes on its cores waits here; one that sleeps or loads data does not."""
    key = (os.getpid(), threading.get_ident())
    if _SCHEDSTAT["key"] != key:  # another thread (or a forked child) asks: open its own file
        _SCHEDSTAT["key"], _SCHEDSTAT["fd"] = key, _open_schedstat()
    if _SCHEDSTAT["fd"] < 0:
        return None
    try:
        return int(os.pread(_SCHEDSTAT["fd"], 128, 0).split()[1]) * 1e-9
    except (OSError, ValueError, IndexError):
        return None


def _open_schedstat() -> int:
    try:
        return os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    except OSError:
        return -1


def scalar_value(name: str, value):
    """A scalar as a float, or a one-element tensor left on its device; anything else is refused."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ConfigError(f"step(): scalar {name!r} is a tensor of {value.numel()} {value.dtype} values; "
                              f"pass one real number (e.g. {name}.mean())")
        return value.detach().reshape(1)
    if isinstance(value, complex) or np.iscomplexobj(value):
        raise ConfigError(f"step(): scalar {name!r}={value!r} is complex; pass a real number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"step(): scalar {name}={value!r} is not a number") from None


class ScalarNames:
    """The names of a run's user scalars, each checked once: storable, not one of tview's own, within the
    shard's scalar count (`lr_count` learning-rate scalars besides the built-in ones)."""

    def __init__(self, lr_count: int):
        self.names: set[str] = set()
        self.builtin = len(BUILTIN_SCALARS) - 1 + lr_count

    def check(self, name: str):
        if name in self.names:
            return
        if is_builtin_scalar(name):
            raise ConfigError(f"step(): scalar {name!r} is one tview records itself ({', '.join(BUILTIN_SCALARS)}, "
                              f"lr/N); choose another name for yours")
        if len(name.encode("utf-8")) > schema.SCALAR_NAME_LEN:
            raise ConfigError(f"step(): scalar name {name[:40]!r}... is longer than {schema.SCALAR_NAME_LEN} "
                              f"UTF-8 bytes; choose a shorter name")
        if len(self.names) + self.builtin >= schema.MAX_SCALARS:
            raise ConfigError(f"step(): scalar {name!r} would exceed the {schema.MAX_SCALARS} scalars a shard holds "
                              f"(already: {sorted(self.names)})")
        self.names.add(name)
