"""The overview's card, ranks table, loss bands and standouts come from the rank summaries alone: on a run whose
shards (all but the first) hold nothing readable while the summaries beside them are intact, every rank is
still shown, and the Ranks page's table and first figure too."""


import numpy as np
import pytest

from app.pages import overview, ranks
from tests.app.conftest import hollow_run
from tview.errors import TviewError
from tview.render import summaries
from tview.store.reader import open_run

RANKS = 72  # beyond 64 ranks a run opens its shards on first use


@pytest.fixture(scope="module")
def hollow(tmp_path_factory):
    """72 ranks whose shards 1..71 cannot be read while their summaries can (tests.app.conftest.hollow_run)."""
    return hollow_run(str(tmp_path_factory.mktemp("hollow") / "run"), RANKS)


def test_the_overview_is_drawn_from_the_summaries_when_the_shards_cannot_be_read(hollow):
    with open_run(hollow, skip_bad_shards=True) as run:
        data = overview.card_data(run)
        assert run.problems == {}  # no shard was opened but the first
        steps, loss = data["loss"]
        assert loss.shape[0] == RANKS and len(steps) >= 30 and np.isfinite(loss).all()
        assert len(data["table"]) == RANKS and all(r["step_time"] is not None for r in data["table"])
        assert data["states"] == {"closed": RANKS}
        assert "slowest" in data["named"].get(RANKS - 1, [])  # the synthetic run's step time grows with the rank
        fig = overview._loss_figure(["run"], {"run": (data["ranks"], *data["loss"])}, {"run": data["named"]}, {})
        names = [t.name for t in fig.data]
        assert "median rank" in names and f"rank {RANKS - 1} (slowest)" in names
        card = overview.run_card("run", data, None)
        assert f"{RANKS} of {RANKS} rank(s) readable" in str(card)
        with pytest.raises(TviewError):
            run.stat("grad_norm", run.layers[0], 5)  # the shard itself is unreadable


def test_the_ranks_pages_table_and_first_figure_come_from_the_summaries(hollow):
    with open_run(hollow, skip_bad_shards=True) as run:
        s = summaries.compact(run.rank_summaries())
        table = ranks.summary(run, s)
        assert len(table["rows"]) == RANKS and table["rows"][0]["rank"] == RANKS - 1  # slowest first
        name = ranks.trend_name("local_grad_norm", ranks.WHOLE, summaries.trend_names(s))
        assert name == "local_grad_norm"
        steps, values = ranks.trend_values(run, s, name)
        assert values.shape[0] == RANKS and np.isfinite(values).all()
        assert run.problems == {}
        assert ranks.trend_name("local_grad_norm", run.layers[0], summaries.trend_names(s)) is None  # per layer
        assert ranks.trend_name("weight_sum", ranks.WHOLE, summaries.trend_names(s)) is None  # a mean over layers
        assert ranks.trend_name(ranks.SCALAR + "loss", ranks.WHOLE, summaries.trend_names(s)) == "loss"
