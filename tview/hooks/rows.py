"""Host side of a recorded step, on the writer thread: probe results (already numpy) become the
TableRows the store writes, one per probe that ran. Plain numpy, no device work."""

from __future__ import annotations

import numpy as np

from tview.hooks.activation_probes import ActivationProbe, merge_partials
from tview.hooks.param_probes import ParamProbe
from tview.hooks.params import ParamContext
from tview.store import schema
from tview.store.records import TableRow
from tview.store.schema import Column

_EMPTY: dict[tuple, np.ndarray] = {}  # (kind, width, dtype, n) -> a row before any value: copied, never handed out


def _empty(col: Column, n: int) -> object:
    """A column's row for n layers before any is filled: NaN (or 0 for counts); CHANNEL: a dict."""
    if col.kind == schema.CHANNEL:
        return {}
    key = (col.kind, col.width, col.dtype, n)
    row = _EMPTY.get(key)
    if row is None:
        shape = {schema.LAYER: (n,), schema.HIST: (n, schema.HIST_BINS), schema.VECTOR: (n, col.width)}[col.kind]
        dtype = np.dtype(col.dtype)
        row = _EMPTY[key] = np.full(shape, np.nan if dtype.kind == "f" else 0, dtype=dtype)
    return row.copy()


class RowBuilder:
    """Builds TableRows for a model's layers: `layer_names` all recorded layers, `param_ids` the
    index (in layer_names) of each layer a ParamContext holds."""

    def __init__(self, layer_names: list[str], param_ids: list[int], ctx: ParamContext | None):
        self.layer_names = layer_names
        self.ids = np.asarray(param_ids, dtype=np.int64)
        self.ctx = ctx

    def param_row(self, probe: ParamProbe, parts: dict) -> TableRow:
        """A parameter probe's row: its per-parameter-layer values spread over all layers."""
        n = len(self.layer_names)
        measured_p = np.asarray(parts.pop("measured", np.ones(len(self.ids), dtype=bool)), dtype=bool)
        values = probe.check(probe.finalize(parts, self.ctx))
        row = TableRow(np.zeros(n, dtype=bool))
        row.measured[self.ids] = measured_p
        for col in probe.columns:
            if col.name not in values:
                continue
            v = values[col.name]
            if col.kind == schema.CHANNEL:
                row.values[col.name] = {self.layer_names[i]: np.asarray(c, dtype=np.float32)
                                        for i, c in zip(self.ids, v) if c is not None}
            else:
                out = _empty(col, n)
                out[self.ids] = v
                row.values[col.name] = out
        return row

    def activation_row(self, probe: ActivationProbe, calls: dict[int, list[dict]],
                       row: TableRow | None = None) -> TableRow | None:
        """An activation probe's row from its partials per layer index (several calls merged), added to `row` (a
        batch_row's) when given; None when it measured no layer."""
        row = row if row is not None else self._empty_row(probe)
        for layer, layer_calls in calls.items():
            out = probe.check(probe.finalize(merge_partials(probe, layer_calls)))
            if out:
                self._put(probe, row, layer, out)
        return row if row.measured.any() else None

    def _empty_row(self, probe: ActivationProbe) -> TableRow:
        n = len(self.layer_names)
        row = TableRow(np.zeros(n, dtype=bool), {c.name: _empty(c, n) for c in probe.columns})
        if probe.sampled:
            row.sample_n, row.total_n = np.zeros(n), np.zeros(n)
        return row

    def batch_row(self, probe: ActivationProbe, layers: list[int], row_start: list, parts: dict,
                  skip: np.ndarray | None = None) -> TableRow:
        """An activation probe's row from its finalize_outputs over a batch whose outputs are these layers, but for
        the outputs `skip` marks (a layer called several times: its calls are merged by activation_row)."""
        out = probe.finalize_outputs(parts, row_start)
        probe.check({k: v for k, v in out.items() if k != "measured"})
        row = self._empty_row(probe)
        ok = np.asarray(out.get("measured", np.ones(len(layers), dtype=bool)), dtype=bool)
        if skip is not None:
            ok &= ~skip
        where = np.asarray(layers, dtype=np.int64)[ok]
        row.measured[where] = True
        for col in probe.columns:
            if col.name not in out:
                continue
            if col.kind == schema.CHANNEL:
                row.values[col.name] = {self.layer_names[layer]: np.asarray(v, dtype=np.float32)
                                        for layer, v, good in zip(layers, out[col.name], ok) if good}
            else:
                row.values[col.name][where] = np.asarray(out[col.name])[ok]
        if probe.sampled:
            row.sample_n[where], row.total_n[where] = np.asarray(out["sample_n"])[ok], np.asarray(out["total_n"])[ok]
        return row

    def _put(self, probe: ActivationProbe, row: TableRow, layer: int, out: dict):
        row.measured[layer] = True
        for col in probe.columns:
            if col.name not in out:
                continue
            if col.kind == schema.CHANNEL:
                row.values[col.name][self.layer_names[layer]] = np.asarray(out[col.name], dtype=np.float32)
            else:
                row.values[col.name][layer] = out[col.name]
        if probe.sampled:
            row.sample_n[layer], row.total_n[layer] = out["sample_n"], out["total_n"]
