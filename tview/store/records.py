"""Host-side records the recorder hands to the writer: plain numpy, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tview.store.schema import TableSpec


@dataclass
class TableRow:
    """One probe's row at one step: which layers it measured, and its columns' values.

    values: column name -> [L] (LAYER), [L, B] (HIST), [L, width] (VECTOR), or {layer name: [C]} (CHANNEL).
    Entries of layers not measured are ignored (readers never see them). sample_n / total_n: [L]
    values used and values there were, for a sampled table.
    """

    measured: np.ndarray
    values: dict[str, object] = field(default_factory=dict)
    sample_n: np.ndarray | None = None
    total_n: np.ndarray | None = None


@dataclass
class StepRecord:
    """Everything recorded at one optimizer step of one rank: scalars, the rows of the probes that
    ran at this step (by table name), and snapshots."""

    step: int
    wall_time: float
    scalars: dict[str, float] = field(default_factory=dict)
    tables: dict[str, TableRow] = field(default_factory=dict)
    filters: dict[str, np.ndarray] | None = None  # layer -> [Cout, Cin, kH, kW]
    feature_maps: dict[str, np.ndarray] | None = None  # layer -> [N, C, H, W]


@dataclass
class ShardLayout:
    """What a shard holds, fixed when it is created (SWMR allows no new datasets later).

    tables: the probes' declarations; channel_widths: per CHANNEL column, {layer name: C} of the
    layers it has values for.
    """

    rank: int
    world_size: int
    run_id: str
    layers: list[dict]  # [{"name", "type", "kind", "channels", "params"}...] in model order
    tables: list[TableSpec] = field(default_factory=list)
    channel_widths: dict[str, dict[str, int]] = field(default_factory=dict)
    filter_shapes: dict[str, tuple] = field(default_factory=dict)
    feature_map_shapes: dict[str, tuple] = field(default_factory=dict)
    probe_inputs: np.ndarray | None = None
    probe_targets: np.ndarray | None = None

    @property
    def layer_names(self) -> list[str]:
        return [layer["name"] for layer in self.layers]
