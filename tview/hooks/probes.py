"""Probes: one small class per measurement, each declaring the table it writes.

A probe says what it measures (its columns: per layer, per channel, histogram or small vector),
what it reads (gradient, local gradient, weight, activation) and when (every recorded step or the
preset's detail steps). It computes on the tensor's own device and returns partial results; on the
writer thread it finalizes its own values. The Recorder only schedules probes, moves their results
to the host in one transfer and queues them; the store creates each probe's table from its
declaration. Adding a statistic is adding a probe class here (see CONTRIBUTING.md).

Activation probes (tview/hooks/activation_probes.py) see one module output at a time; parameter
probes (tview/hooks/param_probes.py) see every layer's parameters at once (tview/hooks/params.py).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from tview.store import schema
from tview.store.schema import Column, TableSpec

_K = schema.HIST_HALF
EVERY, DETAIL = "every", "detail"
FORCE_DEVICE_PATH = os.environ.get("TVIEW_FORCE_DEVICE_PATH") == "1"


def hist_bin_index(values: torch.Tensor) -> torch.Tensor:
    """Bin index (0..HIST_BINS-1, as float) of each value in the fixed signed-log histogram.

    NaN stays NaN (not counted); +-Inf fall in the outermost bins; exact zeros in the middle bin.
    """
    v = values.detach().float()
    c = v.abs().log10_().sub_(schema.HIST_LO).mul_(schema.HIST_PER_DECADE)
    c = c.clamp_(0, _K - 0.5).floor_().add_(1).mul_(v.sign())  # 10 cheap vectorised passes: on CPU
    return c.add_(_K)  # 7x faster than one torch.bucketize (a binary search per value, not vectorised)


def hist_bins_host(values: np.ndarray) -> np.ndarray:
    """hist_bin_index in numpy on the host (int64; NaN in the spare bin HIST_BINS): the same float32 passes, 6x
    faster than torch's on the CPU (whose log10 slows down further on the zeros and tiny values of gradients)."""
    v = np.asarray(values, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.log10(np.abs(v))
        c -= np.float32(schema.HIST_LO)
        c *= np.float32(schema.HIST_PER_DECADE)
        np.clip(c, 0, _K - 0.5, out=c)
        np.floor(c, out=c)
        c += 1
        c *= np.sign(v)
        c += _K
    return np.nan_to_num(c, copy=False, nan=schema.HIST_BINS).astype(np.int64)


def host_shortcuts(t: torch.Tensor) -> bool:
    """True where numpy shortcuts and host-side branches may replace torch ops: a CPU tensor, outside
    torch.compile, unless TVIEW_FORCE_DEVICE_PATH=1 makes the CPU take the GPU's code path (so that its
    launches and syncs can be counted on any machine)."""
    return t.device.type == "cpu" and not FORCE_DEVICE_PATH and not torch.compiler.is_compiling()


_REGISTRY: list[type] = []  # every concrete probe class, in definition order


def one_tensor(results: list[torch.Tensor]) -> torch.Tensor:
    """The 0-d results of a multi-tensor reduction as one 1-D tensor: a view where they are consecutive elements
    of one buffer (older CUDA builds of _foreach_norm return such views: no op), else one stack op (the CPU's
    results, and torch 2.11's CUDA ones, allocated one by one). Where it matters, reduce per block instead
    (ParamContext.blockwise)."""
    first, last, n = results[0], results[-1], len(results)
    if (first.dim() == 0 and last.dim() == 0 and first.is_contiguous()
            and last.data_ptr() == first.data_ptr() + (n - 1) * first.element_size()
            and last.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
            and all(t.data_ptr() == first.data_ptr() + i * first.element_size() for i, t in enumerate(results))):
        return first.as_strided((n,), (1,), first.storage_offset())
    return torch.stack(results)


class Probe:
    """Base of every probe: the declaration of its table. Subclasses set `table` (the table's name),
    `columns`, `reads` and `sampled`, say on which steps of which presets they run (`cadence_for`),
    and implement compute/finalize (see the two kinds of probe). Defining the class registers it."""

    table: str = ""
    columns: tuple[Column, ...] = ()
    reads: str = ""
    sampled: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("table"):  # a class declaring its own table (a variant of another is not registered)
            _REGISTRY.append(cls)

    @classmethod
    def cadence_for(cls, preset) -> str | None:
        """EVERY (each recorded step), DETAIL (the preset's detail steps) or None (not in this preset)."""
        return None

    @classmethod
    def create(cls, preset, setting: dict) -> Probe | None:
        """This probe for a preset, or None when the preset does not run it. `setting`: what some probes
        need from the Recorder (layer_names, distributed, trajectory_dims, seed)."""
        cadence = cls.cadence_for(preset)
        return cls(cadence) if cadence else None

    def __init__(self, cadence: str = EVERY):
        if cadence not in schema.CADENCES:
            raise ValueError(f"{type(self).__name__}: cadence must be one of {schema.CADENCES}, got {cadence!r}")
        self.cadence = cadence

    @property
    def spec(self) -> TableSpec:
        doc = (type(self).__doc__ or "").strip().splitlines()[0]
        return TableSpec(self.table, self.columns, self.reads, self.cadence, self.sampled, doc)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def check(self, values: dict) -> dict:
        """`values` (what finalize returned), refused with a clear error if it holds a name the probe
        does not declare: the store would have no column for it."""
        allowed = self.__dict__.get("_allowed")
        if allowed is None or allowed[0] is not self.columns:  # (once: a record's rows check every probe's names)
            allowed = self._allowed = (self.columns, frozenset(self.names) | {"sample_n", "total_n"})
        if allowed[1].issuperset(values):
            return values
        unknown = sorted(set(values) - allowed[1])
        if unknown:
            raise ValueError(f"probe {type(self).__name__} returned {unknown}, which its columns do not declare "
                             f"({list(self.names)}); add them to {type(self).__name__}.columns")
        return values

    def __repr__(self):
        return f"{type(self).__name__}({self.cadence})"


def registered_probes() -> list[type[Probe]]:
    """Every probe class defined so far (tview's own and any a user defines), in definition order."""
    import tview.hooks.activation_probes  # noqa: F401  (defining them registers them)
    import tview.hooks.param_probes  # noqa: F401
    return list(_REGISTRY)


def unregister(cls: type[Probe]) -> None:
    """Forget a probe class (a test's, say): Recorders made afterwards do not run it."""
    if cls in _REGISTRY:
        _REGISTRY.remove(cls)
