"""The Run: a run's manifest and shards, and the query API over them (statistics, scalars, snapshots, ranks).

Every value returned was measured: a statistic is read on the steps (and layers) its probe measured and
nowhere else, so NaN in what comes back means the model produced NaN. The jobs behind it each have a module:
HDF5 access (shard_reader, shard_header), the shards and their problems (pool), rank health (health).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from tview.errors import CorruptShardError, TviewError
from tview.store import health, parallel, schema
from tview.store.lock import guarded
from tview.store.manifest import find_runs, read_manifest
from tview.store.pool import ShardPool, being_created
from tview.store.rank_summary import RankSummary
from tview.store.shard_reader import ShardReader, strided

__all__ = ["Run", "open_run", "find_runs", "strided", "ShardReader", "being_created", "RankSummary"]

Series = tuple[np.ndarray, np.ndarray]


def _empty() -> Series:
    return np.zeros(0, dtype=np.int64), np.zeros(0)


class Run:
    """A recorded run: manifest plus one shard per rank. Use tview.open_run() to make one."""

    def __init__(self, path: str, skip_bad_shards: bool = False):
        self.path = os.path.dirname(path) if path.endswith(schema.MANIFEST_NAME) else path
        self.manifest = read_manifest(self.path)
        self.world_size = int(self.manifest["world_size"])
        self.skip_bad_shards = skip_bad_shards
        self._pool = ShardPool(self.path, self.world_size, list(self.manifest["layers"]), skip_bad_shards)
        self._health = health.Health(self._pool)
        self.layers: list[str] = self._pool.layers  # module names, as in model.named_modules()

    # -- structure ------------------------------------------------------------------------
    @property
    def layer_info(self) -> list[dict]:
        """Per layer: name, type, channels, params (a shard's, which knows channel counts; else the manifest's)."""
        return self._pool.layer_info

    @property
    def problems(self) -> dict[int, str]:
        """rank -> why its shard is not read (missing, damaged, being created)."""
        return self._pool.problems

    @property
    def ranks(self) -> list[int]:
        """Ranks with a shard that looks sound (shards of large runs are opened on first use)."""
        return self._pool.ranks

    @property
    def missing_ranks(self) -> list[int]:
        return sorted(r for r in self.problems if r not in self._pool.files)

    def shard_path(self, rank: int) -> str:
        return self._pool.shard_path(rank)

    @guarded
    def refresh(self):
        """Pick up shards that appeared since opening (rows are always read fresh)."""
        self._pool.scan()

    @guarded
    def shard(self, rank: int) -> ShardReader:
        return self._pool.shard(rank)

    def layer_index(self, layer: str | int) -> int:
        if isinstance(layer, (int, np.integer)):
            if not 0 <= layer < len(self.layers):
                raise KeyError(f"layer index {layer} out of range; {len(self.layers)} layers")
            return int(layer)
        try:
            return self.layers.index(layer)
        except ValueError:
            raise KeyError(f"{self.path}: no layer {layer!r}; layers: {', '.join(self.layers)}") from None

    def tables(self) -> dict[str, schema.TableSpec]:
        """The probe tables this run holds (their declarations: columns, cadence, what they read)."""
        ref = self._pool.reference()
        return dict(ref.tables) if ref else {}

    @guarded
    def table_length(self, table: str, rank: int = 0) -> int:
        """Rows a probe table (or 'scalars', 'snapshots') holds on a rank: the steps it ran on."""
        return self.shard(rank).length(table)

    def _names(self, *kinds: str) -> list[str]:
        return [c.name for spec in self.tables().values() for c in spec.columns if c.kind in kinds]

    def stat_names(self) -> list[str]:
        """Per-layer statistics this run holds (for menus and arrays: never a hand-picked list)."""
        return self._names(schema.LAYER)

    def channel_stat_names(self) -> list[str]:
        """Per-output-channel statistics this run holds."""
        return self._names(schema.CHANNEL)

    def hist_kinds(self) -> list[str]:
        """Histogram kinds this run holds ('grad', 'weight', 'act', ...)."""
        return self._names(schema.HIST)

    def _column(self, name: str, rank: int, kinds: tuple[str, ...]) -> tuple[ShardReader, str, schema.Column]:
        shard = self.shard(rank)
        found = shard.columns.get(name)
        if found is None or found[1].kind not in kinds:
            have = [c for c, (_, col) in shard.columns.items() if col.kind in kinds]
            raise KeyError(f"{self.path}: rank {rank} records no {name!r}; it has: {', '.join(have)}")
        return shard, found[0], found[1]

    # -- series ---------------------------------------------------------------------------
    @guarded
    def steps(self, rank: int = 0) -> np.ndarray:
        """Recorded steps of a rank (ascending)."""
        return self.shard(rank).steps(schema.TABLE_SCALARS)

    @guarded
    def scalar_names(self, rank: int = 0) -> list[str]:
        return self.shard(rank).scalar_names()

    @guarded
    def scalar(self, name: str, rank: int = 0, max_points: int | None = None) -> Series:
        """(steps, values) of a per-step scalar: loss, lr, step_time, examples_per_sec, ..."""
        shard = self.shard(rank)
        if name == schema.WALL_TIME:
            return shard.read(schema.TABLE_SCALARS, schema.WALL_TIME, strided(shard.length(schema.TABLE_SCALARS),
                                                                                  max_points))
        names = shard.scalar_names()
        if name not in names:
            raise KeyError(f"{self.path}: rank {rank} has no scalar {name!r}; scalars: {', '.join(names)}")
        # a step where this scalar was not passed: absent, not NaN
        return shard.measured(schema.TABLE_SCALARS, schema.VALUES, names.index(name), max_points,
                              (names.index(name),), kept=True)

    @guarded
    def stat(self, name: str, layer: str | int, rank: int = 0, max_points: int | None = None,
             ranks: Iterable[int] | None = None):
        """(steps, values) of a statistic of one layer at the steps where it was measured; per-channel
        statistics give values [steps, C]. With `ranks` (e.g. run.ranks): {rank: (steps, values)} of those
        ranks, read as stat_across_ranks reads them."""
        if ranks is not None:
            return self.stat_across_ranks(name, layer, ranks, max_points)
        shard, table, col = self._column(name, rank, (schema.LAYER, schema.CHANNEL))
        i = self.layer_index(layer)
        if col.kind == schema.LAYER:
            return shard.measured(table, name, i, max_points, (i,))
        got = self.channel_stats(name, rank, [i], max_points)
        if self.layers[i] not in got:
            raise KeyError(f"{self.path}: no {name} for layer {self.layers[i]!r} (it has no channels recorded)")
        return got[self.layers[i]]

    @guarded
    def channel_stats(self, name: str, rank: int = 0, layers=None, max_points: int | None = None) -> dict:
        """{layer: stat(name, layer, rank, max_points)} of a per-channel statistic for the `layers` (default all)
        that record channels, the table's steps and flags read once for them all."""
        shard, table, _ = self._column(name, rank, (schema.CHANNEL,))
        held = shard.members(table, name)
        index = [self.layer_index(x) for x in (self.layers if layers is None else layers)]
        for i in index:
            if self.layers[i] not in held and shard.read(table, schema.MEASURED, slice(None), (i,))[1].any():
                raise CorruptShardError(f"{shard.path}: {table}/{name}/{self.layers[i]} is missing though the table "
                                        f"measured layer {self.layers[i]!r} (damaged or edited shard)")
        index = [i for i in index if self.layers[i] in held]
        got = shard.measured_many(table, [(f"{name}/{self.layers[i]}", i) for i in index], max_points)
        return {self.layers[i]: series for i, series in zip(index, got)}

    @guarded
    def stat_matrix(self, name: str, rank: int = 0, max_points: int | None = None):
        """(steps, values [steps, layers]) of one statistic for every layer, at the steps its probe ran,
        as a numpy masked array: masked where that layer was not measured in that row."""
        shard, table, _ = self._column(name, rank, (schema.LAYER,))
        steps, values, mask = shard.masked(table, name, max_points)
        return steps, np.ma.MaskedArray(values, mask=~mask)

    @guarded
    def stat_info(self, name: str, layer: str | int | None = None, rank: int = 0) -> dict:
        """How a statistic (or histogram kind) was measured: {"exact": bool, "sample": N, "of": M, "note"}
        (N and M: medians over the measured rows, None when exact)."""
        shard, table, _ = self._column(name, rank, schema.KINDS)
        if not shard.tables[table].sampled:
            return {"exact": True, "sample": None, "of": None, "note": "exact: over the whole tensor"}
        if layer is None:  # over every measured layer
            _, n, mask = shard.masked(table, schema.SAMPLE_N, 2000)
            n, m = n[mask], shard.masked(table, schema.TOTAL_N, 2000)[1][mask]
        else:
            i = self.layer_index(layer)
            n = shard.measured(table, schema.SAMPLE_N, i, 2000, (i,))[1]
            m = shard.measured(table, schema.TOTAL_N, i, 2000, (i,))[1]
        return schema.sample_note(n, m)

    @guarded
    def layer_values_at(self, name: str, step: int | None, rank: int = 0):
        """(step, masked values [layers]) of a layer statistic at the latest row at or before `step`
        (None: the last); (None, all masked) when there is none. Reads that row alone."""
        return self.layer_rows_at([name], step, rank)[name]

    @guarded
    def layer_rows_at(self, names: list[str], step: int | None, rank: int = 0) -> dict[str, tuple]:
        """{name: layer_values_at(name, step, rank)} of several layer statistics, each table's step column read
        once and one row of each column."""
        shard = self.shard(rank)
        by_table: dict[str, list[str]] = {}
        for name in names:
            by_table.setdefault(self._column(name, rank, (schema.LAYER,))[1], []).append(name)
        out = {}
        for table, columns in by_table.items():
            found = shard.latest(table, step, [schema.MEASURED] + columns)
            for j, name in enumerate(columns):
                if found is None:
                    out[name] = (None, np.ma.masked_all(len(self.layers)))
                else:
                    out[name] = (found[0], np.ma.MaskedArray(found[1][j + 1], mask=~found[1][0].astype(bool)))
        return out

    @guarded
    def channel_values_at(self, name: str, layer: str | int, step: int | None, rank: int = 0):
        """(step, values [C]) of a per-channel statistic at the latest measured row at or before
        `step` (None: the last); None when the layer has none there. Reads that row alone."""
        try:
            found = self.channel_rows_at(name, step, rank, [layer])
        except KeyError:
            return None
        return found.get(self.layers[self.layer_index(layer)])

    @guarded
    def channel_rows_at(self, name: str, step: int | None, rank: int = 0, layers=None) -> dict[str, tuple]:
        """{layer: (step, values [C])} of a per-channel statistic at each layer's latest measured row at or before
        `step` (None: the last), for `layers` (default all) that have one: the table's step column and measured
        flags read once, then one row per layer (never a whole column)."""
        shard, table, _ = self._column(name, rank, (schema.CHANNEL,))
        steps, measured = shard.head(table, step)
        out = {}
        for i in range(len(self.layers)) if layers is None else [self.layer_index(x) for x in layers]:
            rows = np.flatnonzero(measured[:, i])
            if not len(rows):  # no row of it (a layer without channels has no dataset either)
                continue
            try:
                found = shard.last_of_rows(table, f"{name}/{self.layers[i]}", rows)
            except CorruptShardError:
                if shard.has(table, f"{name}/{self.layers[i]}"):
                    raise
                raise CorruptShardError(f"{shard.path}: {table}/{name}/{self.layers[i]} is missing though the "
                                        f"table measured layer {self.layers[i]!r} (damaged or edited shard)") from None
            if found is not None:
                out[self.layers[i]] = (int(steps[found[0]]), found[1])
        return out

    @guarded
    def trajectory(self, layer: str | int, rank: int = 0) -> Series:
        """(steps, [steps, dims]): the layer's parameters projected on fixed random unit directions,
        at the steps that recorded it."""
        shard, table, _ = self._column("trajectory", rank, (schema.VECTOR,))
        i = self.layer_index(layer)
        return shard.measured(table, "trajectory", i, None, (i,))

    @guarded
    def trajectories(self, rank: int = 0) -> Series:
        """(steps, [steps, layers, dims]) of every layer's projected parameters at the steps that
        recorded the trajectory (layers without parameters hold NaN)."""
        shard, table, _ = self._column("trajectory", rank, (schema.VECTOR,))
        steps, values, mask = shard.masked(table, "trajectory")
        return steps, np.where(mask[:, :, None], values, np.nan)

    @guarded
    def histogram(self, kind: str, layer: str | int, rank: int = 0, max_points: int | None = None):
        """(steps, bin_edges, counts [steps, bins]) of 'grad', 'weight' or 'act' values."""
        shard, table, _ = self._column(kind, rank, (schema.HIST,))
        i = self.layer_index(layer)
        steps, counts = shard.measured(table, kind, i, max_points, (i,))
        return steps, schema.hist_edges(), counts

    # -- snapshots ------------------------------------------------------------------------
    @guarded
    def _snapshot(self, kind: str, layer: str, step: int | None, rank: int):
        shard = self.shard(rank)
        name = self.layers[self.layer_index(layer)]
        have = shard.snapshot_layers(kind)
        if name not in have:
            raise KeyError(f"{self.path}: no {kind} recorded for layer {name!r}; layers with {kind}: {have}")
        steps = shard.steps(schema.TABLE_SNAPSHOTS)
        if len(steps) == 0:
            raise KeyError(f"{shard.path}: no snapshot recorded yet")
        i = len(steps) - 1 if step is None else int(np.searchsorted(steps, step, side="right")) - 1
        if i < 0:
            raise KeyError(f"{shard.path}: no snapshot at or before step {step}; first is {steps[0]}")
        _, value = shard.read(schema.TABLE_SNAPSHOTS, f"{kind}/{name}", slice(i, i + 1))
        return int(steps[i]), value[0]

    @guarded
    def snapshot_steps(self, rank: int = 0) -> np.ndarray:
        return self.shard(rank).steps(schema.TABLE_SNAPSHOTS)

    def filters(self, layer: str, step: int | None = None, rank: int = 0) -> tuple[int, np.ndarray]:
        """(step, [Cout, Cin, kH, kW]) conv filters at the latest snapshot at or before step (None: last)."""
        return self._snapshot(schema.FILTERS, layer, step, rank)

    def feature_maps(self, layer: str, step: int | None = None, rank: int = 0) -> tuple[int, np.ndarray]:
        """(step, [N, C, H, W]) the probe batch's feature maps at the latest snapshot at or before step."""
        return self._snapshot(schema.FEATURE_MAPS, layer, step, rank)

    @guarded
    def probe_inputs(self, rank: int = 0) -> np.ndarray | None:
        return self.shard(rank).probe_inputs()

    # -- health of the ranks --------------------------------------------------------------
    @guarded
    def rank_summaries(self) -> dict[int, RankSummary]:
        """Per rank (0 to world_size - 1, and any beyond with a shard): its RankSummary (steps, first/last step
        and wall time, closed, dropped, first_nonfinite, trend), from the small file its writer keeps beside the
        shard (no HDF5 opened), or computed from the shard when that file is missing or stale. A rank that
        cannot be read has its problem and no trend; readable ones have problem None."""
        return self._health.summaries()

    def rank_status(self) -> dict[int, dict]:
        """Per rank: recorded steps, last step, whether it closed cleanly, records dropped, first and
        last wall time, problem (None when readable); from rank_summaries()."""
        return health.rank_status(self.rank_summaries())

    def stopped_ranks(self) -> dict[int, int | None]:
        """Ranks that stopped early: not closed cleanly and behind the furthest rank. rank -> last step."""
        return health.stopped_ranks(self.rank_summaries())

    @guarded
    def first_nonfinite(self, rank: int = 0) -> dict[str, dict]:
        """Where NaN/Inf first appeared on a rank, kept by the writer (no scan):
        {"layers": {layer: step}, "scalars": {name: step}, "tensors": {"activation"|"gradient"|...: {layer: step}}}.
        Absent names: never."""
        return health.first_nonfinite(self.shard(rank), self.layers)

    # -- across ranks ---------------------------------------------------------------------
    def stat_across_ranks(self, name: str, layer: str | int, ranks=None, max_points: int | None = None) -> dict:
        """{rank: (steps, values)} of one layer statistic on every readable rank (or `ranks`), empty arrays
        where a rank has none or cannot be read (its problem then in run.problems). Hundreds of ranks are
        read by several processes (tview.store.parallel)."""
        self.layer_index(layer)
        return self._across(lambda share: {r: self._or_empty(self.stat, name, layer, r, max_points=max_points)
                                           for r in share}, ranks)

    def scalar_across_ranks(self, name: str, ranks=None, max_points: int | None = None) -> dict:
        """{rank: (steps, values)} of one scalar on every readable rank (or `ranks`), as stat_across_ranks."""
        return self._across(lambda share: {r: self._or_empty(self.scalar, name, r, max_points=max_points)
                                           for r in share}, ranks)

    def per_rank(self, work, ranks=None) -> dict:
        """{rank: work(rank)} over every readable rank (or `ranks`), split over processes as stat_across_ranks reads
        (tview.store.parallel): diagnosis's per-rank checks. work's answers travel pickled."""
        return parallel.read_across(list(self.ranks if ranks is None else ranks),
                                    lambda share: {r: work(r) for r in share})

    def _across(self, read, ranks) -> dict:
        ranks = list(self.ranks if ranks is None else ranks)
        return parallel.read_across(ranks, read, extra=lambda share: {r: self.problems[r] for r in share
                                                                      if r in self.problems},
                                    merge_extra=self._found_bad)

    def _found_bad(self, problems: dict[int, str]):
        """Shards another process found unreadable (tview.store.parallel): left out here too."""
        for rank, why in problems.items():
            self._pool.leave_out(rank, why)

    @staticmethod
    def _or_empty(read, *args, **kwargs) -> Series:
        try:
            return read(*args, **kwargs)
        except (KeyError, TviewError):
            return _empty()

    def frame(self, stats=None, layers=None, ranks=None, scalars=None, max_points=None, *, progress=None):
        """A pandas DataFrame in long form (step, rank, layer, statistic, channel, value) of the statistics
        and scalars asked for (all by default); see tview.store.frame. Needs pandas (tview[export])."""
        from tview.store.frame import frame
        return frame(self, stats, layers, ranks, scalars, max_points, progress=progress)

    @guarded
    def close(self):
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Run({self.path!r}, ranks={len(self.ranks)}, layers={len(self.layers)})"


def open_run(path: str, skip_bad_shards: bool = False) -> Run:
    """Open a run folder (or its run.tview). A bad shard raises, unless skip_bad_shards is set:
    then it is left out and described in run.problems."""
    return Run(os.fspath(path), skip_bad_shards=skip_bad_shards)
