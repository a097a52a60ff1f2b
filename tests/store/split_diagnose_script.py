"""Run by test_many_ranks in a fresh process (one thread, as a split read needs): diagnosis and the rank summaries
with the per-rank work split over processes and in one process, printed as JSON for the test to compare."""

import json
import sys

import tview
from tview.diagnose import every_finding
from tview.store import parallel


def diagnosis(path: str) -> dict:
    with tview.open_run(path) as run:
        summaries = {r: s.steps for r, s in run.rank_summaries().items()}
        found = [f"{f.kind} {f.rank} {f.layer} {f.step} {f.message}" for f in every_finding(tview.diagnose(run))]
        return {"findings": found, "summaries": summaries, "processes": parallel.processes_for(len(run.ranks))}


parallel.PARALLEL_FROM = 4
split = diagnosis(sys.argv[1])
parallel.PARALLEL_FROM = 10**9
print(json.dumps({"split": split, "whole": diagnosis(sys.argv[1])}))
