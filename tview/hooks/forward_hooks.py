"""The Recorder's hooks on the forward pass: on while a step records, off between recorded steps of an eager model.

A Python hook costs 10-20 us a layer even where it returns at once (the layer's kernels have just emptied the CPU's
caches: the same Python runs 3-8x slower there than between steps), so an unrecorded step of a 26-layer net paid
about 0.4 ms for hooks that did nothing. They go back on at the end of the step before a recorded one (in step(),
where the caches are warm). Under torch.compile they stay on for good: dynamo ignores hooks added after it traced
a model, so they must be there when it traces. Off is tried only once a recorded forward pass ran them eagerly and
while nothing has been compiled in the process (dynamo's graph count) and the model is not a compiled wrapper.
"""

from __future__ import annotations

import sys
from typing import Callable

from torch import nn

from tview.hooks.layers import compiled_in_place, is_compiled, runs_compiled


def compiled_anything() -> bool:
    """Whether torch.compile has traced a graph in this process (dynamo not imported: no)."""
    if "torch._dynamo" not in sys.modules:
        return False
    from torch._dynamo.utils import counters
    return bool(counters["stats"]["unique_graphs"])


_HOOK_GUARDS = {"users": 0, "before": True}  # Recorders that asked dynamo to guard on hooks; the setting before


def guard_hooks() -> None:
    """Make dynamo guard on modules' hooks (torch._dynamo.config.skip_nnmodule_hook_guards = False) while a Recorder
    records a compiled model. Compiled copies of one class share dynamo's code: without the guard, a copy with tview's
    hooks runs code traced for one without them (a teacher or EMA copy compiled beside the student), and its
    activation statistics are lost step after step. The setting is put back when the last such Recorder closes."""
    import torch._dynamo
    if _HOOK_GUARDS["users"] == 0:
        _HOOK_GUARDS["before"] = torch._dynamo.config.skip_nnmodule_hook_guards
    _HOOK_GUARDS["users"] += 1
    torch._dynamo.config.skip_nnmodule_hook_guards = False


def unguard_hooks() -> None:
    """One Recorder that called guard_hooks() is done with it."""
    import torch._dynamo
    _HOOK_GUARDS["users"] = max(_HOOK_GUARDS["users"] - 1, 0)
    if _HOOK_GUARDS["users"] == 0:
        torch._dynamo.config.skip_nnmodule_hook_guards = _HOOK_GUARDS["before"]


def compile_in_play(outer: nn.Module, model: nn.Module) -> bool:
    """Whether torch.compile has traced a graph in this process or the model is a compiled wrapper."""
    return compiled_anything() or runs_compiled(outer, model)


class ForwardHooks:
    """Forward (and forward-pre) hooks that can be taken off and put back, in the order they were added (put back,
    they run after hooks that others added since)."""

    def __init__(self, outer: nn.Module, model: nn.Module):
        self.outer, self.model = outer, model
        self.specs: list[tuple[nn.Module, bool, Callable, bool]] = []  # (module, pre-hook, function, with kwargs)
        self.handles: list = []
        self.eager_seen = False  # a recorded forward pass ran the hooks eagerly (set by the Recorder)
        self.pinned = False  # on for good: torch.compile is in play
        self._wrapped = is_compiled(outer)  # a torch.compile wrapper around the model (asked once: it cannot change)

    def add(self, module: nn.Module, fn: Callable, pre: bool = False, kwargs: bool = False) -> None:
        self.specs.append((module, pre, fn, kwargs))
        self.handles.append(_install(module, pre, fn, kwargs))

    def want(self, needed: bool) -> None:
        """On for a step that records; otherwise off where that is safe (see the module text)."""
        if needed or not self._may_be_off():
            if len(self.handles) < len(self.specs):
                self.remove()
                self.handles = [_install(*spec) for spec in self.specs]
        elif self.handles:
            self.remove()

    def _may_be_off(self) -> bool:
        if self.pinned or not self.eager_seen:
            return False
        if self._wrapped or compiled_anything() or compiled_in_place(self.model):  # compile_in_play, wrapper known
            self.pinned = True
            return False
        return True

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def clear(self) -> None:
        """Off for good (close, a failed writer)."""
        self.remove()
        self.specs = []


def _install(module: nn.Module, pre: bool, fn: Callable, kwargs: bool):
    if pre:
        return module.register_forward_pre_hook(fn, with_kwargs=kwargs)
    return module.register_forward_hook(fn, with_kwargs=kwargs)
