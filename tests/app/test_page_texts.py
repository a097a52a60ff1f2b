"""What pages write beside their figures, from the plain functions the callbacks call."""

from app.pages import filters, three_d


def test_the_snapshot_label_says_the_step_the_slider_is_at():
    steps = [0, 20, 40]
    assert filters.snapshot_label(steps, 0) == "snapshot at step 0 (1 of 3)"
    assert filters.snapshot_label(steps, 40) == "snapshot at step 40 (3 of 3)"
    assert filters.snapshot_label([], None) == "no snapshot yet"


def test_a_pair_below_the_threshold_never_reads_as_at_it():
    text = str(three_d.similarity_text("conv1", 0.9, [], [(0, 5, 0.8996), (1, 2, 0.71)]))
    assert "no two filters of conv1 correlate at r >= 0.90" in text
    assert "(r = 0.89)" in text and "(r = 0.71)" in text
