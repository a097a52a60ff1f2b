"""Host-side records the recorder hands to the writer: plain numpy, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StepRecord:
    """Everything recorded at one optimizer step of one rank. Tables left as None are not written."""

    step: int
    wall_time: float
    scalars: dict[str, float] = field(default_factory=dict)
    stats: dict[str, np.ndarray] | None = None  # stat name -> [layers]
    channel_stats: dict[str, dict[str, np.ndarray]] | None = None  # stat -> layer -> [C]
    trajectory: np.ndarray | None = None  # [layers, dims]
    hist: dict[str, np.ndarray] | None = None  # kind -> [layers, bins]
    filters: dict[str, np.ndarray] | None = None  # layer -> [Cout, Cin, kH, kW]
    feature_maps: dict[str, np.ndarray] | None = None  # layer -> [N, C, H, W]


@dataclass
class ShardLayout:
    """What a shard holds, fixed when it is created (SWMR allows no new datasets later)."""

    rank: int
    world_size: int
    run_id: str
    layers: list[dict]  # [{"name", "type", "channels", "params"}...] in model order
    trajectory_dims: int
    filter_shapes: dict[str, tuple] = field(default_factory=dict)
    feature_map_shapes: dict[str, tuple] = field(default_factory=dict)
    probe_inputs: np.ndarray | None = None
    probe_targets: np.ndarray | None = None

    @property
    def layer_names(self) -> list[str]:
        return [layer["name"] for layer in self.layers]
