"""The store's schema, declared up front: version, file names, tables, statistic names, histogram bins."""

from __future__ import annotations

import numpy as np

SCHEMA_VERSION = 1
MANIFEST_NAME = "run.tview"
SHARD_PATTERN = "rank-{rank:05d}.h5"
LIBVER = ("v110", "v110")  # readable by ParaView 5.11's HDF5 1.10

# Layer statistics: one dataset [steps, layers] each in the "stats" table.
GRAD_STATS = ("grad_norm", "grad_mean", "grad_std", "grad_max_abs", "grad_nan", "grad_inf")
WEIGHT_STATS = ("weight_norm", "update_ratio")
LOCAL_GRAD_STATS = ("local_grad_norm",)
ACT_STATS = ("act_mean", "act_std", "act_min", "act_max", "act_zero_frac", "act_nan", "act_inf")
NONFINITE_STATS = ("grad_nan", "grad_inf", "act_nan", "act_inf")  # counts of non-finite values
LAYER_STATS = GRAD_STATS + LOCAL_GRAD_STATS + WEIGHT_STATS + ACT_STATS
# Per output channel: one dataset [steps, channels] per layer, under stats/<name>/<layer>.
CHANNEL_STATS = ("act_channel_mean", "act_channel_zero_frac")
HIST_KINDS = ("grad", "weight", "act")

# Tables: a group with a "step" dataset and columns that grow with it, row for row.
TABLE_SCALARS = "scalars"
TABLE_STATS = "stats"
TABLE_HIST = "hist"
TABLE_SNAPSHOTS = "snapshots"
MAX_SCALARS = 64  # columns of scalars/values; names in scalars/names, in order of first use
SCALAR_NAME_LEN = 64

# Fixed histogram bins shared by every layer, step and rank (so histograms compare over time):
# signed log-magnitude bins, HIST_PER_DECADE per decade from 10**HIST_LO to 10**HIST_HI, an
# exact-zero bin in the middle. The outermost bins also hold larger magnitudes (overflow), the
# innermost non-zero bins the smaller ones (underflow).
HIST_LO = -8
HIST_HI = 4
HIST_PER_DECADE = 4
HIST_HALF = (HIST_HI - HIST_LO) * HIST_PER_DECADE  # bins on each side of zero
HIST_BINS = 2 * HIST_HALF + 1


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
