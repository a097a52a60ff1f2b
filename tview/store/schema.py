"""The store's schema: version, file, group, dataset and attribute names, how a probe's table is declared, bins.

Statistic names are not listed here: each probe declares its own table (`TableSpec`), the writer
creates it from that declaration and stores the declaration in the shard, and readers discover
what a shard holds from the shard itself. Adding a statistic never touches this file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

SCHEMA_VERSION = 2
MANIFEST_NAME = "run.tview"
SHARD_PATTERN = "rank-{rank:05d}.h5"
LIBVER = ("v110", "v110")  # readable by ParaView 5.11's HDF5 1.10

# Groups of a shard
TABLE_SCALARS = "scalars"
TABLE_SNAPSHOTS = "snapshots"
PROBES = "probes"  # one table (group) per probe under it: probes/<table>/...
STATUS = "status"  # closed flag, dropped count and first_nonfinite/<table> (first NaN/Inf step per layer)
PROBE_BATCH = "probe"  # the probe batch whose feature maps the snapshots hold: probe/inputs
MAX_SCALARS = 64  # columns of scalars/values; names in scalars/names, in order of first use
SCALAR_NAME_LEN = 64  # bytes of a scalar's UTF-8 name


# Datasets of a table (every table: STEP and MEASURED; scalars: WALL_TIME, VALUES, NAMES; sampled tables:
# SAMPLE_N and TOTAL_N), of status, of snapshots and of the probe batch
STEP = "step"
MEASURED = "measured"
WALL_TIME = "wall_time"
VALUES = "values"
NAMES = "names"
SAMPLE_N = "sample_n"
TOTAL_N = "total_n"
CLOSED = "closed"
DROPPED = "dropped"
FIRST_NONFINITE = "first_nonfinite"
# A NaN/Inf in the gradients of a step the optimizer skipped (scalar optimizer_skipped == 1: torch.amp.GradScaler
# found them and did not step), its loss finite, is the scaler at work, not a fault, unless the skipped steps run
# on: from this many consecutive skipped records, the run counts from its first step (first_nonfinite, diagnose).
SKIPPED_RUN = 8
FILTERS = "filters"
FEATURE_MAPS = "feature_maps"
INPUTS = "inputs"
SPEC_ATTR = "spec"  # a probe table's declaration (TableSpec JSON), on its group

# Root attributes of a shard
VERSION_ATTR = "tview_schema_version"
RANK_ATTR = "rank"
WORLD_SIZE_ATTR = "world_size"
LAYERS_ATTR = "layers_json"
TABLES_ATTR = "tables_json"


def table_path(table: str) -> str:
    """The group of a table in a shard: scalars and snapshots at the top, probe tables under probes/."""
    return table if table in (TABLE_SCALARS, TABLE_SNAPSHOTS, STATUS) else f"{PROBES}/{table}"


# Column kinds: what one row of a column holds
LAYER = "layer"      # [L]: one number per layer
CHANNEL = "channel"  # one dataset per layer, [C]: one number per output channel
HIST = "hist"        # [L, HIST_BINS] counts: a histogram per layer
VECTOR = "vector"    # [L, width]: a small vector per layer (the trajectory's coordinates)
KINDS = (LAYER, CHANNEL, HIST, VECTOR)
CADENCES = ("every", "detail")  # every recorded step, or the preset's detail steps
READS = ("gradient", "local_gradient", "weight", "activation")

# Fixed histogram bins shared by every layer, step and rank (so histograms compare over time):
# signed log-magnitude bins, HIST_PER_DECADE per decade from 10**HIST_LO to 10**HIST_HI, an
# exact-zero bin in the middle. The outermost bins also hold larger magnitudes (overflow), the
# innermost non-zero bins the smaller ones (underflow).
HIST_LO = -8
HIST_HI = 4
HIST_PER_DECADE = 4
HIST_HALF = (HIST_HI - HIST_LO) * HIST_PER_DECADE  # bins on each side of zero
HIST_BINS = 2 * HIST_HALF + 1


@dataclass(frozen=True)
class Column:
    """One statistic a probe writes. `nonfinite`: a count (or a 0/1 flag) of NaN/Inf values (the writer keeps the first
    step where it is > 0); `nonfinite_value`: a value that is NaN/Inf only where its tensor holds a NaN/Inf (a float64
    sum of the weights: the writer keeps the first step where it is); `width`: the row width of a VECTOR column."""

    name: str
    kind: str = LAYER
    dtype: str = "float32"
    nonfinite: bool = False
    width: int = 0
    nonfinite_value: bool = False

    @property
    def watched(self) -> bool:
        """The writer keeps the first step this column shows a NaN/Inf (status/first_nonfinite)."""
        return self.nonfinite or self.nonfinite_value


@dataclass(frozen=True)
class TableSpec:
    """A probe's table: its name, the columns it writes, what it reads and on which recorded steps
    it runs. `sampled`: values are estimated from part of the tensor; the table then keeps, per row
    and layer, how many values were used (`sample_n`) out of how many (`total_n`)."""

    name: str
    columns: tuple[Column, ...]
    reads: str
    cadence: str = "every"
    sampled: bool = False
    doc: str = ""

    def __post_init__(self):
        bad = [c.name for c in self.columns if c.kind not in KINDS]
        if bad or self.cadence not in CADENCES or self.reads not in READS:
            raise ValueError(f"table {self.name!r}: bad kind ({bad}), cadence {self.cadence!r} or reads {self.reads!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TableSpec:
        d = json.loads(text)
        d["columns"] = tuple(Column(**c) for c in d["columns"])
        return cls(**d)


def hist_edges() -> np.ndarray:
    """Bin edges (HIST_BINS + 1 values, ascending) of the fixed histogram; the middle bin is zero."""
    mags = 10.0 ** (HIST_LO + np.arange(HIST_HALF + 1) / HIST_PER_DECADE)
    return np.concatenate([-mags[::-1], mags])


def hist_centers() -> np.ndarray:
    """A representative value per bin: geometric centre of each side's bin, 0 for the zero bin."""
    mags = 10.0 ** (HIST_LO + (np.arange(HIST_HALF) + 0.5) / HIST_PER_DECADE)
    return np.concatenate([-mags[::-1], [0.0], mags])


def shard_name(rank: int) -> str:
    return SHARD_PATTERN.format(rank=rank)


def sample_note(n: np.ndarray, m: np.ndarray) -> dict:
    """How a sampled statistic was measured (Run.stat_info), from the sample sizes (SAMPLE_N: n) and tensor sizes
    (TOTAL_N: m) of the measured rows."""
    if not len(n) or np.isnan(n).all():
        why = "none measured yet" if not len(n) else "its size was not recorded: converted from store schema 1"
        return {"exact": False, "sample": None, "of": None, "note": f"estimated from a sample ({why})"}
    known = ~(np.isnan(n) | np.isnan(m))
    whole = n[known] >= m[known]  # per row: every value read
    n, m = int(np.median(n[known])), int(np.median(m[known]))
    if whole.all():
        return {"exact": True, "sample": n, "of": m, "note": f"exact: all {m} values"}
    if whole.any():  # (a batch that shrank, layers of several sizes: the medians alone would say exact)
        return {"exact": False, "sample": n, "of": m, "note": f"estimated from a sample in {int((~whole).sum())} of "
                f"{len(whole)} measurements (medians: {n} of {m} values)"}
    return {"exact": False, "sample": n, "of": m, "note": f"estimated from {n} of {m} values"}
