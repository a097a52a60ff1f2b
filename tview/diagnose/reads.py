"""What diagnosis reads of each rank, read in one pass over the shards and kept while it runs.

The checks pass over the ranks in turn (the loss, the step times, gradient norms, weight fingerprints) and ask for
some series more than once, while the store keeps at most 64 shards open: each pass reopened every shard. Reads
reads each rank's scalars (the whole table in one read) and the per-layer statistics the checks declare in one
open of its shard, split over processes as run.per_rank splits, and answers the checks' run.scalar and
run.stat_matrix from what it kept: the same arrays the Run gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tview.errors import TviewError
from tview.store import schema
from tview.store.lock import H5_FAILURES


class Reads:
    """A Run as the checks see it: scalar() and stat_matrix() of the ranks gather() read come from what it kept
    (for the max_points it was made with), everything else from the Run."""

    def __init__(self, run, max_points: int | None = None):
        self.run = run
        self.max_points = max_points
        self._kept: dict[int, dict] = {}  # rank -> {SCALARS: {name: (steps, values)}, stat: (steps, masked) | None}

    def __getattr__(self, name: str):
        return getattr(self.run, name)

    def gather(self, ranks: Iterable[int], stats: Iterable[str] = (), work: dict[str, RankWork] | None = None):
        """Read each of `ranks` once: its scalars and the per-layer statistics `stats`, and do the checks' `work`
        there ({key: work(run, rank)}, answers kept for worked(key)). A rank where that fails is left to the Run and
        the check (which then say why, as they would without this)."""
        stats, work, max_points, run = tuple(stats), dict(work or {}), self.max_points, self.run
        got = run.per_rank(lambda rank: rank_reads(run, rank, stats, work, max_points), list(ranks))
        self._kept.update({rank: kept for rank, kept in got.items() if kept is not None})

    def worked(self, key: str) -> dict:
        """{rank: its answer} of the work gather() did under this key (ranks where it failed left out)."""
        return {rank: kept[WORK][key] for rank, kept in self._kept.items() if key in kept[WORK]}

    def _kept_of(self, rank: int, max_points: int | None, name: str) -> dict | None:
        kept = self._kept.get(rank)
        return kept if kept is not None and max_points == self.max_points and name in kept else None

    def scalar_names(self, rank: int = 0) -> list[str]:
        """run.scalar_names(rank), from the scalars gather() kept of this rank (no shard opened again)."""
        kept = self._kept.get(rank)
        return list(kept[SCALARS]) if kept is not None and SCALARS in kept else self.run.scalar_names(rank)

    def scalar(self, name: str, rank: int = 0, max_points: int | None = None):
        """run.scalar(name, rank, max_points), from what gather() kept when it read this rank."""
        kept = self._kept_of(rank, max_points, SCALARS)
        if kept is None or name == schema.WALL_TIME:
            return self.run.scalar(name, rank, max_points=max_points)
        if name not in kept[SCALARS]:
            raise KeyError(f"{self.run.path}: rank {rank} has no scalar {name!r}; scalars: {', '.join(kept[SCALARS])}")
        return kept[SCALARS][name]

    def stat_matrix(self, name: str, rank: int = 0, max_points: int | None = None):
        """run.stat_matrix(name, rank, max_points), from what gather() kept when it read this statistic there."""
        kept = self._kept_of(rank, max_points, name)
        if kept is None:
            return self.run.stat_matrix(name, rank, max_points=max_points)
        if kept[name] is None:
            raise KeyError(f"{self.run.path}: rank {rank} records no {name!r}")
        return kept[name]


RankWork = Callable[[object, int], object]  # (run, rank) -> what a check keeps of that rank
SCALARS, WORK = "", " "  # keys of a rank's scalars and of the work done there (no statistic has these names)


def rank_reads(run, rank: int, stats: tuple[str, ...], work: dict[str, RankWork], max_points: int | None
               ) -> dict | None:
    """{SCALARS: {name: (steps, values)} of every scalar, stat: run.stat_matrix(stat) or None where the rank records
    none, WORK: {key: work(run, rank)}} of one rank, its scalars' table read whole once; None when a read fails."""
    try:
        shard = run.shard(rank)
        steps, values, measured = shard.masked(schema.TABLE_SCALARS, schema.VALUES, max_points)
        scalars = {name: (steps[measured[:, i]], values[measured[:, i], i])
                   for i, name in enumerate(shard.scalar_names())}
        kept = {SCALARS: scalars, **{name: _stat_or_none(run, name, rank, max_points) for name in stats}}
        return {**kept, WORK: {key: done(run, rank) for key, done in work.items()}}
    except (TviewError, *H5_FAILURES):
        return None


def _stat_or_none(run, name: str, rank: int, max_points: int | None):
    try:
        return run.stat_matrix(name, rank, max_points=max_points)
    except KeyError:  # not recorded there (a damaged shard raises CorruptShardError)
        return None
