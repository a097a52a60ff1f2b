"""Health of a run's ranks: summaries, where NaN/Inf first appeared, which closed and which stopped early."""

from __future__ import annotations

from tview.errors import TviewError
from tview.store import rank_summary, schema
from tview.store.lock import H5_FAILURES, from_h5py
from tview.store.pool import ShardPool
from tview.store.rank_summary import RankSummary
from tview.store.shard_reader import ShardReader


def first_nonfinite(shard: ShardReader, layers: list[str]) -> dict[str, dict]:
    """Where NaN/Inf first appeared on a shard's rank, kept by the writer (no scan): rank_summary.first_nonfinite_map's
    {"layers": {layer: step}, "scalars": {name: step}, "tensors": {what a table reads: {layer: step}}}."""
    return rank_summary.first_nonfinite_map(shard.first_nonfinite_steps(), layers, shard.scalar_names(),
                                            {t: spec.reads for t, spec in shard.tables.items()})


def shard_summary(shard: ShardReader, scalar_names: list[str], first: dict) -> dict:
    """A rank summary's JSON object computed from its shard (what its writer would have written beside it)."""
    n = shard.length(schema.TABLE_SCALARS)
    steps, walls = shard.read(schema.TABLE_SCALARS, schema.WALL_TIME, slice(0, n, max(n - 1, 1)))  # first, last
    last = (int(steps[-1]), float(walls[-1])) if n else None
    lengths = {t: shard.length(t) for t in shard.tables}
    trend = rank_summary.trend_from_rows(n, shard.read, scalar_names, shard.tables, lengths)
    closed, dropped = shard.closed_and_dropped()
    return rank_summary.summary_dict(shard.rank, shard.world_size, trend, last, float(walls[0]) if n else None,
                                     closed, dropped, first)


class Health:
    """Rank summaries of a pool's shards, each summary file parsed again only when it or its shard changed (a
    poll of 1024 unchanged ranks: 2048 stat calls, no JSON)."""

    def __init__(self, pool: ShardPool):
        self.pool = pool
        self._parsed: dict[int, tuple] = {}  # rank -> (stamps of its summary file and shard, RankSummary)

    def summaries(self) -> dict[int, RankSummary]:
        """Per rank (0 to world_size - 1, and any beyond with a shard): its summary; a rank that cannot be read
        has its problem and no trend."""
        pool = self.pool
        out = {}
        for rank in range(max([pool.world_size] + [r + 1 for r in pool.ranks])):
            summary = None
            if rank in pool.files and rank not in pool.problems:
                summary = self._written(rank) or self._from_shard(rank)
            out[rank] = summary or RankSummary.unreadable(rank, pool.problems.get(rank, "missing"))
        return out

    def _written(self, rank: int) -> RankSummary | None:
        shard = self.pool.files[rank]
        try:
            key = (*rank_summary.shard_stamp(rank_summary.summary_path(shard)), *rank_summary.shard_stamp(shard))
        except OSError:
            return None
        cached = self._parsed.get(rank)
        if cached is not None and cached[0] == key:
            return cached[1]
        written = rank_summary.read_summary(shard, rank)
        if written is None:
            return None
        summary = RankSummary.from_dict(written)
        self._parsed[rank] = (key, summary)
        return summary

    def _from_shard(self, rank: int) -> RankSummary | None:
        try:
            shard = self.pool.shard(rank)
            computed = shard_summary(shard, shard.scalar_names(), first_nonfinite(shard, self.pool.layers))
        except (TviewError, *H5_FAILURES) as exc:  # damaged where the summary reads: this rank says so
            if not isinstance(exc, TviewError) and not from_h5py(exc):
                raise
            self.pool.problems[rank] = str(exc) if isinstance(exc, TviewError) else \
                f"{self.pool.shard_path(rank)}: cannot be read (damaged?): {type(exc).__name__}: {str(exc)[:300]}"
            return None
        return RankSummary.from_dict(computed)


STATUS_FIELDS = ("steps", "last_step", "closed", "dropped", "first_wall", "last_wall", "problem")


def rank_status(summaries: dict[int, RankSummary]) -> dict[int, dict]:
    """Per rank: recorded steps, last step, whether it closed cleanly, records dropped, first and last wall time,
    problem (None when readable)."""
    return {rank: {k: getattr(s, k) for k in STATUS_FIELDS} for rank, s in summaries.items()}


def stopped_ranks(summaries: dict[int, RankSummary]) -> dict[int, int | None]:
    """Ranks that stopped early: not closed cleanly and behind the furthest rank. rank -> last step."""
    furthest = max((s.last_step for s in summaries.values() if s.last_step is not None), default=None)
    return {r: s.last_step for r, s in summaries.items()
            if not s.closed and (s.last_step is None or s.last_step < (furthest or 0))}
