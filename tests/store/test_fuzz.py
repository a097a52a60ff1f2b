"""A bounded sample of benchmarks/fuzz.py: damaged copies of a real recorded run, each read whole in its own
process with a deadline, must give the original data or a tview error naming the file: no hang, no crash,
no foreign exception, no silent difference. Cases that fail today are strict xfails (issue 11): each turns
into a failure the moment it is fixed, so its mark comes off with the fix.

Rerun one case by hand: `python benchmarks/fuzz.py --only manifest-layers_reversed-0`."""

import os
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import fuzz  # noqa: E402

pytestmark = pytest.mark.slow  # every test here starts a process (or uses a fixture that does)

DEADLINE = 6.0  # seconds; the harness raises it to 4x the undamaged run's read time on a busy machine

# case id -> None (must pass today) or the reason it fails today (a strict xfail). Marks as of the store in the
# working tree of 27 Nov 11:15 (none fails); cases that pick a dataset or object by index depend on the shard layout.
CASES = {
    "truncate-shard_frac-0": None, "truncate-shard_tail-0": None, "truncate-manifest-0": None,
    "manifest-schema_newer-0": None, "manifest-not_json-0": None, "manifest-empty-0": None,
    "manifest-world_size_huge-0": None, "manifest-world_size_two-0": None, "manifest-world_size_zero-0": None,
    "manifest-layers_null-0": None, "manifest-layers_renamed-0": None, "manifest-layers_reversed-0": None,
    "manifest-deep_nesting-0": None, "manifest-world_size_one-0": None,
    "h5edit-schema_attr_newer-0": None, "h5edit-copy_as_other-0": None, "h5edit-layers_attr_reversed-0": None,
    "h5edit-steps_negative-1": None, "h5edit-steps_minus1_last-0": None,
    "h5edit-dataset_removed-3": None, "h5edit-dataset_removed-1": None,
    "h5edit-wrong_shape-3": None, "h5edit-wrong_shape-7": None,
    "odd-directory_shard-0": None, "odd-empty_shard-0": None, "odd-symlink_loop_shard-0": None,
    "odd-chmod000_shard-0": None, "odd-fifo_shard-0": None, "odd-fifo_manifest-0": None,
    "odd-devnull_manifest-0": None, "zeropage-first-0": None, "metaflip-superblock-0": None,
    "metaflip-ohdr-1": None, "metaflip-ohdr-2": None, "metaflip-ohdr-3": None, "metaflip-ohdr-5": None,
    "dataflip-row0-5": None, "dataflip-row0-6": None, "dataflip-contig-0": None, "dataflip-contig-9": None,
    "h5edit-dataset_removed-10": None, "h5edit-wrong_shape-1": None,
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case of the sample and an undamaged copy, run by the fuzz harness (2 processes at a time), by id."""
    work = tmp_path_factory.mktemp("fuzz")
    base = str(work / "base")
    fuzz.record_base(base)
    cases = [fuzz.Case("none", "none", 0)] + [fuzz.Case.parse(c) for c in CASES]
    return {r.case: r for r in fuzz.run_cases(cases, base, str(work), seed=0, deadline=DEADLINE)}


def _param(case_id, reason):
    return pytest.param(case_id, id=case_id,
                        marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else [])


@pytest.mark.parametrize("case_id", [_param(c, why) for c, why in CASES.items()])
def test_damaged_run_reads_right_or_raises_a_tview_error_naming_the_file(results, case_id):
    r = results[case_id]
    assert r.outcome in fuzz.GOOD, (f"{case_id}: {r.outcome}: {r.what}\n  mutation {r.params}\n  {r.exception[:800]}"
                                    f"\n{r.stack}")


def test_fuzz_harness_sees_an_undamaged_copy_as_the_same_run(results):
    """The harness itself: an undamaged copy reads the same as the original, read for read."""
    r = results["none-none-0"]
    assert r.outcome == "ok-same" and r.counts["ok-same"] > 500, r
