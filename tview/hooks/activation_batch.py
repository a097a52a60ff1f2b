"""Activation statistics of every recorded layer at once: one sample of each output, reduced in a few ops.

A forward pass keeps a reference to each recorded layer's output (no op); where it ends, one `ActivationBatch`
gathers a sample of every output into one buffer (one `cat`) and reduces it per (layer, channel) row with
`index_add_` over a row index built once per layout, so a recorded step adds the same few ops whether the
net has 5 layers or 60. The sample is whole examples from the start of the batch, enough of them for at
least PER_CHANNEL values per channel (a 16x16 map: 1 example; an 8x8 map: 4; a Linear layer's features:
PER_CHANNEL examples, or the whole batch). NaN and Inf are looked for over the whole outputs, with one
multi-tensor norm (a NaN anywhere makes the norm NaN; an Inf, or a sum of squares beyond float32, makes it Inf);
on the CPU only where the model's output is not finite (`scan=False` otherwise: see Recorder._reduce_kept).
Under torch.compile each layer's hook builds a batch of its one output in the graph, reduced by reshaping
(inductor fuses it).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from tview.hooks.params import hist_boundaries_below
from tview.hooks.probes import hist_bin_index, host_shortcuts, one_tensor
from tview.store import schema

PER_CHANNEL = 256  # sampled values per channel, at least (fewer where the output holds fewer)
ADDED = ("sums", "sumsq", "zeros")  # per-row statistics that are sums (one index_add_ on the device path)
EXTREMES = ("amax", "amin")  # and extremes (one scatter_reduce_ each)
HIST_CELLS = schema.HIST_BINS + 1  # per output: the bins, then where NaN goes (dropped)
HOW = {"sums": "sum", "sumsq": "sum", "zeros": "sum", "amax": "amax", "amin": "amin"}


def sample_examples(t: torch.Tensor | np.ndarray, per_channel: int | None = PER_CHANNEL) -> int:
    """How many examples from the batch's start the sample takes of an output [N, C, ...] (all: None); a tensor or
    its numpy array."""
    if per_channel is None:
        return t.shape[0]
    per_example = math.prod(t.shape[2:])
    return min(t.shape[0], max(1, math.ceil(per_channel / max(per_example, 1))))


_PREFIXES: dict[tuple, tuple | None] = {}  # (shape, strides, per_channel, host) -> (values, layout) of a prefix sample


def flat_sample(t: torch.Tensor, per_channel: int | None = PER_CHANNEL) -> tuple[torch.Tensor, tuple]:
    """(the sample as a flat tensor in storage order, a view where the output's layout allows, and its
    layout: ("flat", n), or ("nchw" | "nhwc", examples, channels, values per example and channel)). Where one
    example holds more than enough values per channel (on the CPU: per_channel; elsewhere 4x that, as each
    thinning is one more op), every k-th position of the first example is taken (a copy). Eager, a sample that is a
    prefix of the output's storage (the common case) is worked out once per shape and strides: a recorded step
    samples every layer's output, and on a GPU its host time is the step's."""
    t = t.detach() if torch.is_grad_enabled() else t  # under no_grad (the eager path) none is needed: an op less
    if not torch.compiler.is_compiling():
        key = (t.shape, t.stride(), per_channel, host_shortcuts(t))
        if key not in _PREFIXES:
            if len(_PREFIXES) >= 4096:
                _PREFIXES.clear()
            _PREFIXES[key] = _prefix(t, per_channel)
        if _PREFIXES[key] is not None:
            size, layout = _PREFIXES[key]
            return t.as_strided((size,), (1,), t.storage_offset()), layout
    return _flat_sample(t, per_channel)


def _prefix(t: torch.Tensor, per_channel: int | None) -> tuple | None:
    """(values, layout) where the sample of an output shaped as `t` is a prefix of its storage, else None."""
    if t.dim() < 2 or not t.is_contiguous():
        return None
    e, c, n = sample_examples(t, per_channel), t.shape[1], math.prod(t.shape[2:])
    thin_above = per_channel if host_shortcuts(t) else 4 * (per_channel or 0)
    return None if e == 1 and per_channel and n > thin_above else (e * c * n, ("nchw", e, c, n))


def _flat_sample(t: torch.Tensor, per_channel: int | None) -> tuple[torch.Tensor, tuple]:
    if t.dim() < 2:
        return t.reshape(-1), ("flat", t.numel())
    e, c, n = sample_examples(t, per_channel), t.shape[1], math.prod(t.shape[2:])
    thin_above = per_channel if host_shortcuts(t) else 4 * (per_channel or 0)
    s = t[:e]  # (eager, a prefix of the storage is flat_sample's: one op; dynamo: views)
    nhwc = s.dim() == 4 and not s.is_contiguous() and s.is_contiguous(memory_format=torch.channels_last)
    rows = s.permute(0, 2, 3, 1).reshape(e * n, c) if nhwc else s.reshape(e * c, n)  # views
    if e == 1 and per_channel and n > thin_above:
        step = n // per_channel
        if not nhwc and n % step == 0:  # every k-th value of the whole example: the same values, still a view
            return rows.reshape(-1)[::step], ("nchw", e, c, n // step)
        rows = rows[::step] if nhwc else rows[:, ::step]
        n = len(range(0, n, step))
    return rows.reshape(-1), ("nhwc" if nhwc else "nchw", e, c, n)


def layout_rows(layout: tuple) -> int:
    """Rows (channels; 1 for an output without channels) of one output's sample."""
    return 1 if layout[0] == "flat" else layout[2]


def layout_values(layout: tuple) -> int:
    """Sampled values per row."""
    return layout[1] if layout[0] == "flat" else layout[1] * layout[3]


def reduce_one(src: torch.Tensor, layout: tuple, how: str) -> torch.Tensor:
    """Per-row reduction of one output's sample by reshaping it (inside a compiled graph: no row index)."""
    if layout[0] == "flat":
        v, dims = src.reshape(1, -1), (1,)
    else:
        kind, e, c, s = layout
        v, dims = (src.reshape(e, c, s), (0, 2)) if kind == "nchw" else (src.reshape(e * s, c), (0,))
    if how == "sum":
        return v.sum(dims, dtype=torch.float32)
    return v.amin(dims) if how == "amin" else v.amax(dims)


def run_plan(layouts: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(length of each run of consecutive sampled values of one row, the run's row), for the concatenated samples
    of outputs of these layouts: the device's row index repeats each run's row."""
    lengths, rows, base = [], [], 0
    for layout in layouts:
        if layout[0] == "flat":
            lengths.append([layout[1]])
            rows.append([base])
        else:
            kind, e, c, s = layout
            run, n = (s, e * c) if kind == "nchw" else (1, e * s * c)
            lengths.append(np.full(n, run))
            rows.append(base + np.tile(np.arange(c), n // c))
        base += layout_rows(layout)
    return np.concatenate(lengths).astype(np.int64), np.concatenate(rows).astype(np.int64)


def row_index_numpy(layouts: tuple) -> np.ndarray:
    """Row of each sampled value (host, once per set of layouts)."""
    lengths, rows = run_plan(layouts)
    return np.repeat(rows, lengths)


class RowIndex:
    """What the device path's reductions of a set of layouts need, made once (a net's layouts repeat step after
    step): the row index, the histogram slots and the histogram's boundaries."""

    def __init__(self, limit: int = 8):
        self.cache: dict[tuple, object] = {}
        self.limit = limit

    def _cached(self, key: tuple, make):
        if key not in self.cache:
            if len(self.cache) >= self.limit:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = make()
        return self.cache[key]

    def get(self, layouts: tuple, device, what: str = "rows") -> torch.Tensor:
        """On `device`, int32: the row of each sampled value ("rows"), or per row the first histogram slot of its
        output ("row_slot"). Only the one per-value index is kept: scatter_reduce_'s int64 index off the CPU and
        each value's histogram slot are made from it when a detail step needs them (memory, not kept), and only
        for the last layouts seen (the first step's, before in-place outputs were found, differ from later ones)."""
        key = (layouts, str(device), what)
        if what == "rows" and key not in self.cache:
            for old in [k for k in self.cache if k[-1] == "rows"]:
                del self.cache[old]
        return self._cached(key, lambda: _to(torch.from_numpy(_index(layouts, what).astype(np.int32)), device))

    def boundaries(self, device) -> torch.Tensor:
        return self._cached(("boundaries", str(device)), lambda: hist_boundaries_below(device))

    def one(self, device) -> torch.Tensor:
        """A float32 1 on `device` (expanded, the histogram's increments)."""
        return self._cached(("one", str(device)), lambda: torch.ones(1, device=device))


def _index(layouts: tuple, what: str) -> np.ndarray:
    if what == "row_slot":
        return np.repeat(np.arange(len(layouts)) * HIST_CELLS, [layout_rows(lay) for lay in layouts])
    return row_index_numpy(layouts)


def _to(t: torch.Tensor, device) -> torch.Tensor:
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class ActivationBatch:
    """The samples of several outputs and the per-row reductions the activation probes share (each computed
    once, on demand). `outputs` are whole outputs; `samples` (optional: {position: (flat sample, its layout)})
    replaces the sample of some of them (copied in the hook, where a later layer modifies the output in place);
    `per_channel`: the sample's size (None: every value); `scan=False`: the outputs are known to hold no NaN or
    Inf, none is read.
    `wants`: the statistics the due probes read (keys of HOW, "hist"; None: all), computed together on the device
    path (one zeroed table, one index_add_ for the sums, one scatter_reduce_ per extreme)."""

    def __init__(self, outputs: list[torch.Tensor], index: RowIndex | None, samples: dict | None = None,
                 per_channel: int | None = PER_CHANNEL, scan: bool = True, wants: set | None = None):
        self.outputs = list(outputs)  # read under no_grad or detached (a detach per output is an op a step)
        self.scan = scan
        self.wants = set(HOW) | {"hist"} if wants is None else set(wants)
        self._per_channel, self._samples = per_channel, samples
        self.device = self.outputs[0].device
        self.index = index
        rows = (1 if t.dim() < 2 else t.shape[1] for t in self.outputs)  # layout_rows of each sample's layout
        self.row_start = [0, *itertools.accumulate(rows)]  # plain ints: no numpy inside a compiled graph
        self.n_rows = self.row_start[-1]
        self._memo: dict = {}

    def _sampled(self) -> tuple[tuple, torch.Tensor]:
        """(the samples' layouts, the samples in one flat tensor): made when a statistic first reads them (an
        ordinary step's NaN/Inf scan reads the whole outputs: no view op per output)."""
        def make():
            kept = self._samples or {}
            flats, layouts = zip(*(kept[k] if k in kept else flat_sample(t, self._per_channel)
                                   for k, t in enumerate(self.outputs)))
            return tuple(layouts), flats[0] if len(flats) == 1 else torch.cat(flats)
        return self._once("sampled", make)

    @property
    def layouts(self) -> tuple:
        return self._sampled()[0]

    @property
    def sample(self) -> torch.Tensor:
        return self._sampled()[1]

    @property
    def rows(self) -> torch.Tensor | None:
        """Each sampled value's row (None: compiled, reduced by reshaping)."""
        if self.index is None:
            return None
        return self._once("rows", lambda: self.index.get(self.layouts, self.device))

    def _once(self, key: str, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def values(self) -> torch.Tensor:
        """The sample in float32 (statistics accumulate in float32 whatever the outputs' dtype)."""
        return self._once("values", lambda: self.sample.float())

    def _per_row(self, src: torch.Tensor, how: str = "sum") -> torch.Tensor:
        """Per-row reduction of a per-value tensor by reshaping the one output's sample (compiled, in the graph)."""
        return reduce_one(src, self.layouts[0], how)

    def _row_stat(self, key: str) -> torch.Tensor:
        if self.rows is not None:  # the device path: every wanted row statistic at once
            return self._device(key)
        source = {"sums": self.values, "sumsq": lambda: self.values().square(), "zeros": lambda: self.values().eq(0),
                  "amax": self.values, "amin": self.values}[key]
        return self._once(key, lambda: self._per_row(source(), HOW[key]))

    def _device(self, key: str) -> torch.Tensor:
        """On the device path, the row statistic or the histogram cells `key`: made with every other wanted one
        not made yet (one not in `wants` is made when asked)."""
        made = self._memo.setdefault("device", {})
        if key not in made:
            made.update(self._device_table((self.wants | {key}) - set(made)))
        return made[key]

    def _device_table(self, wants: set) -> dict:
        """The wanted row statistics in one zeroed buffer (with the histogram's cells, when wanted): the sums in
        one index_add_ of their columns (values, squares, zeros, each written by one op), each extreme in one
        scatter_reduce_ (include_self=False: the zeros are not compared)."""
        added = [k for k in ADDED if k in wants]
        extremes = [k for k in EXTREMES if k in wants]
        width, cells = len(added) + len(extremes), len(self.outputs) * HIST_CELLS if "hist" in wants else 0
        store = torch.zeros(self.n_rows * width + cells, device=self.device)
        table = store[:self.n_rows * width].view(width, self.n_rows)
        if len(added) == 1:  # one column: a 1-D index_add_ (along dim 1 the CPU's kernel loops, 25x slower)
            table[0].index_add_(0, self.rows, self._columns(added)[0])
        elif added:
            table[:len(added)].index_add_(1, self.rows, self._columns(added))
        if extremes:
            rows = self.rows if self.device.type == "cpu" else self.rows.long()  # a temporary: not kept
            for j, how in enumerate(extremes, len(added)):
                table[j].scatter_reduce_(0, rows, self.values(), how, include_self=False)
        out = {k: table[j] for j, k in enumerate(added + extremes)}
        if cells:
            out["hist"] = store[self.n_rows * width:]
        return out

    def _columns(self, keys: list[str]) -> torch.Tensor:
        """[keys, values] float32: the sample, its squares, 1 where it is zero (one op each, no temporary)."""
        v = self.values()
        out = torch.empty(len(keys), v.numel(), device=self.device)
        for j, k in enumerate(keys):
            if k == "sums":
                out[j].copy_(v)
            elif k == "sumsq":
                torch.square(v, out=out[j])
            else:
                torch.eq(v, 0, out=out[j])
        return out

    def row_zeros(self) -> torch.Tensor:
        """Exact zeros per row."""
        return self._row_stat("zeros")

    def row_sums(self) -> torch.Tensor:
        return self._row_stat("sums")

    def row_sumsq(self) -> torch.Tensor:
        return self._row_stat("sumsq")

    def row_extreme(self, how: str) -> torch.Tensor:
        """Per-row minimum ("amin") or maximum ("amax")."""
        return self._row_stat(how)

    def norms(self) -> torch.Tensor | list:
        """L2 norm of each whole output (float32): NaN where it holds a NaN, Inf where an Inf (several outputs: a
        list of 0-d tensors, gathered by the step's transfer with no stack op)."""
        return self._once("norms", self._norms)

    def _norms(self) -> torch.Tensor:
        if not self.scan:  # known finite: zeros stand for the norms (only their NaN and Inf are read)
            return torch.zeros(len(self.outputs))
        with torch.no_grad():
            return self._scan_norms()

    def _scan_norms(self) -> torch.Tensor | list:
        if len(self.outputs) == 1:
            return torch.linalg.vector_norm(self.outputs[0], dtype=torch.float32).reshape(1)
        by_dtype: dict = {}
        for k, t in enumerate(self.outputs):
            by_dtype.setdefault(t.dtype, []).append(k)
        if len(by_dtype) == 1:  # one tensor: a stack costs the host a third of a view per result in the step's cat
            return one_tensor(torch._foreach_norm(self.outputs, 2, dtype=torch.float32))
        norms: list = [None] * len(self.outputs)  # one multi-tensor norm per dtype, back in the outputs' order
        for ks in by_dtype.values():
            for k, n in zip(ks, torch._foreach_norm([self.outputs[k] for k in ks], 2, dtype=torch.float32)):
                norms[k] = n
        return norms

    def histograms(self) -> torch.Tensor:
        """[outputs, HIST_CELLS] counts of the fixed signed-log histogram of each sample, then of its NaN (the
        whole buffer travels: a slice would be one more copy)."""
        return self._once("hist", self._histograms)

    def _histograms(self) -> torch.Tensor:
        if self.index is None:  # compiled: one output
            flat = hist_bin_index(self.values()).nan_to_num_(nan=schema.HIST_BINS).long()
            counts = torch.zeros(HIST_CELLS, device=self.device)
            one = torch.ones(1, device=self.device)
        else:  # GPU: one search per value (int32 bins), fewer launches (NaN goes to the spare bin); cells in the
            # table's buffer; each value's slot is its bin plus its row's first slot (a temporary: none kept)
            flat = torch.bucketize(self.values(), self.index.boundaries(self.device), out_int32=True).add_(
                self.index.get(self.layouts, self.device, "row_slot").index_select(0, self.rows))
            counts, one = self._device("hist"), self.index.one(self.device)
        counts.index_add_(0, flat, one.expand(flat.numel()))
        return counts.view(len(self.outputs), HIST_CELLS)

    def sampled(self) -> list[float]:
        """Values of each output in the sample."""
        return [float(layout_values(lay) * layout_rows(lay)) for lay in self.layouts]

    def per_row(self) -> list[float]:
        """Sampled values per row of each output."""
        return [float(layout_values(lay)) for lay in self.layouts]

    def sizes(self) -> list[float]:
        """Values of each whole output."""
        return [float(t.numel()) for t in self.outputs]

    def has_channels(self) -> list[bool]:
        return [lay[0] != "flat" for lay in self.layouts]
