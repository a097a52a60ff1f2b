"""tview.diagnose with the rank summaries: which ranks saw NaN/Inf first, where each stopped and (beyond MAX_RANKS
ranks) the loss and time checks come from them, and find what the shard reads find."""

import os

import numpy as np

from tview.diagnose import diagnose
from tview.diagnose.checks import common, nonfinite, ranks, replicas
from tview.store.reader import open_run

RANKS, STEPS, SLOW, DIVERGES, ONSET = 6, 200, 4, 2, 120


def _weights(spec, rank: int, step: int, nudge) -> dict:
    """The weight table's row: every layer's weight_sum and weight_norm 1.0, but nudge = (rank, step, layer):
    that rank's weight_sum of that layer 1.001 from that step on."""
    values = {c.name: np.ones(3) for c in spec.columns}
    if nudge and rank == nudge[0] and step >= nudge[1]:
        values["weight_sum"][nudge[2]] = 1.001
    return values


def _times(rank: int, late: bool, rng, waits: bool) -> dict:
    """busy_time (rank SLOW's triples from ONSET); or, with waits, step time equal on every rank (synchronous) and
    wait_time: from ONSET every other rank waits 0.25 s for rank SLOW, which waits for nobody."""
    if not waits:
        return {"step_time": 0.2, "busy_time": (0.3 if late and rank == SLOW else 0.1) * (1 + 0.01 * rng.normal())}
    wait = (0.005 if rank == SLOW else 0.25) if late else 0.005
    return {"step_time": (0.45 if late else 0.2) * (1 + 0.01 * rng.normal()),
            "wait_time": wait * (1 + 0.1 * rng.random())}


def _write_run(path: str, nan_at: dict[int, int] | None = None, nudge: tuple | None = None,
               waits: bool = False) -> str:
    """RANKS ranks x STEPS steps written by the store's own writer (summaries kept at each flush): rank SLOW's busy
    time triples from ONSET, rank DIVERGES's loss triples from ONSET; nan_at: rank -> step its loss turns NaN;
    nudge: see _weights."""
    from tview.store import schema
    from tview.store.manifest import write_manifest
    from tview.store.records import ShardLayout, StepRecord, TableRow
    from tview.store.shard import ShardWriter
    from tview.store.synthetic import TABLES, synthetic_layers
    os.makedirs(path)
    specs = [t for t in TABLES if t.name in ("grad", "weight")]
    layers = synthetic_layers(3)
    write_manifest(path, {"model": "test", "world_size": RANKS, "layers": layers, "preset": "default",
                          "schedule": "every(1)", "snapshot_schedule": "never", "filter_layers": [],
                          "probe_layers": [], "run_id": "diag"})
    for rank in range(RANKS):
        rng = np.random.default_rng(rank)
        w = ShardWriter(os.path.join(path, schema.shard_name(rank)), ShardLayout(
            rank=rank, world_size=RANKS, run_id="diag", layers=layers, tables=specs))
        records = []
        for step in range(STEPS):
            late = step >= ONSET
            loss = (3.0 if late and rank == DIVERGES else 1.0) * (2.0 + 0.02 * rng.normal())
            if nan_at and rank in nan_at and step >= nan_at[rank]:
                loss = float("nan")
            tables = {s.name: TableRow(np.ones(3, np.uint8), _weights(s, rank, step, nudge) if s.name == "weight" else
                                       {c.name: np.zeros(3) if c.nonfinite else np.ones(3) for c in s.columns})
                      for s in specs}
            records.append(StepRecord(step, 1000.0 + step, {"loss": loss, **_times(rank, late, rng, waits)}, tables))
            if len(records) == 50:
                w.write(records)
                w.flush()
                records = []
        w.close(clean=True)
    return path


def test_loss_and_time_from_the_summaries_trends_find_what_the_shards_do(tmp_path, monkeypatch):
    path = _write_run(str(tmp_path / "run"))
    with open_run(path) as run:
        summaries = run.rank_summaries()
        from_shards = ranks.check_time(run, None) + ranks.check_loss(run, None)
        assert [(f.kind, f.rank) for f in from_shards] == [("slow_rank", SLOW), ("rank_diverges", DIVERGES)]
        monkeypatch.setattr(common, "MAX_RANKS", RANKS - 1)  # beyond it: the trends (every 2nd of 200 steps)
        from_trends = ranks.check_time(run, None, summaries) + ranks.check_loss(run, None, summaries)
        assert [(f.kind, f.rank) for f in from_trends] == [(f.kind, f.rank) for f in from_shards]
        stride = summaries[0]["trend"]["stride"]
        assert stride == 2 and all(abs(a.step - b.step) <= stride for a, b in zip(from_trends, from_shards))
        assert abs(from_trends[0].step - ONSET) <= stride


def test_the_first_nan_is_found_reading_only_the_ranks_whose_summaries_saw_it_first(tmp_path):
    path = _write_run(str(tmp_path / "nan"), nan_at={3: 150, 5: 170})
    with open_run(path) as run:
        summaries = run.rank_summaries()
        assert nonfinite.first_nonfinite_ranks(run, summaries) == [3]
        assert nonfinite.first_nonfinite_ranks(run, None) == list(range(RANKS))
        with_summaries = nonfinite.check_nonfinite(run, None, summaries)
        assert [(f.kind, f.rank, f.step, f.tensor) for f in with_summaries] == [("nonfinite", 3, 150, "loss")]
        assert [vars(f) for f in nonfinite.check_nonfinite(run, None)] == [vars(f) for f in with_summaries]
        assert diagnose(run)[0].kind == "nonfinite"


def test_replicas_beyond_max_ranks_read_only_the_ranks_whose_weight_sum_trend_differs(tmp_path, monkeypatch):
    path = _write_run(str(tmp_path / "nudged"), nudge=(3, 77, 1))
    with open_run(path) as run:
        summaries = run.rank_summaries()
        full = replicas.check_replicas(run, None)
        assert [(f.kind, f.rank, f.layer, f.step) for f in full] == [("replicas_differ", 3, run.layers[1], 77)]
        monkeypatch.setattr(common, "MAX_RANKS", RANKS - 1)
        assert replicas.replica_suspects(run, summaries) == ([0, 3], [3])  # first differs at trend step 78
        found = replicas.check_replicas(run, None, summaries)
        assert [(f.kind, f.rank, f.layer, f.step) for f in found] == [("replicas_differ", 3, run.layers[1], 77)]
    clean = _write_run(str(tmp_path / "clean"))
    with open_run(clean) as run:
        monkeypatch.setattr(common, "MAX_RANKS", RANKS - 1)
        assert replicas.replica_suspects(run, run.rank_summaries()) is None
        assert replicas.check_replicas(run, None, run.rank_summaries()) == []


def test_the_rank_the_others_wait_for_is_named_from_step_time_less_wait(tmp_path):
    """Every rank's step time is the slowest's; the others wait for rank SLOW (slow after its optimizer step, say,
    where busy_time cannot see it): its wait is small while theirs is large."""
    path = _write_run(str(tmp_path / "waits"), waits=True)
    with open_run(path) as run:
        found = ranks.check_time(run, None)
    assert [(f.kind, f.rank, f.stat) for f in found] == [("slow_rank", SLOW, "wait_time")]
    assert abs(found[0].step - ONSET) <= 1
