"""What pages write beside their figures, from the plain functions the callbacks call."""

import numpy as np
import pytest

from app.pages import filters, overview, ranks, scalars, three_d
from tview.render import figures


def test_the_snapshot_label_says_the_step_the_slider_is_at():
    steps = [0, 20, 40]
    assert filters.snapshot_label(steps, 0) == "snapshot at step 0 (1 of 3)"
    assert filters.snapshot_label(steps, 40) == "snapshot at step 40 (3 of 3)"
    assert filters.snapshot_label([], None) == "no snapshot yet"


def test_a_pair_below_the_threshold_never_reads_as_at_it():
    text = str(three_d.similarity_text("conv1", 0.9, [], [(0, 5, 0.8996), (1, 2, 0.71)]))
    assert "no two filters of conv1 correlate at r >= 0.90" in text
    assert "(r = 0.89)" in text and "(r = 0.71)" in text


def _row(rank: int, step_time: float | None) -> dict:
    return {"rank": rank, "state": "closed", "steps": 10, "last_step": 18, "wall_seconds": 3.0, "step_time": step_time,
            "tview_share": 0.1, "first_nan": None, "dropped": 0, "problem": None}


def test_the_ranks_tables_give_each_median_step_time_with_its_unit():
    rows = [_row(0, 0.0082), _row(1, 1.5), _row(2, None)]
    for shown in (str(ranks.table(rows, None, {})), str(overview._worst_table(rows, None))):
        assert "median step time" in shown and "(ms)" not in shown
        assert "8.2 ms" in shown and "1.50 s" in shown, shown


def test_a_scalar_leaves_the_ranks_layer_menu_off_and_says_why():
    assert ranks.layer_control("scalar:loss") == (True, "loss is a scalar: one value per rank and step, of no layer")
    assert ranks.layer_control("grad_norm") == (False, "")
    assert ranks.layer_control(None) == (False, "")


def test_the_scalars_page_draws_durations_in_ms_and_the_clock_from_the_first_record():
    steps = np.arange(3)
    lines = [figures.Series("rank 0", steps, np.array([0.004, 0.008, 0.012])),
             figures.Series("rank 1", steps, np.array([0.005, np.nan, 0.2]))]
    shown, unit = scalars.series_in_units("step_time", lines)
    assert unit == "ms" and np.allclose(shown[0].values, [4, 8, 12]) and shown[1].values[2] == pytest.approx(200)
    clock = [figures.Series("rank 0", steps, np.array([1.7e9 + 1, 1.7e9 + 2, 1.7e9 + 4]))]
    shown, unit = scalars.series_in_units("wall_time", clock)
    assert unit == "s from the first record" and list(shown[0].values) == [0, 1, 3]
    assert scalars.series_in_units("loss", lines) == (lines, "")
