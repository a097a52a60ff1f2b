"""Run by test_many_ranks in a fresh process (one thread, as a split read needs): a read across ranks split
over processes and the same read in one process, printed as JSON for the test to compare."""

import json
import sys

import numpy as np

import tview
from tview.store import parallel, pool

path = sys.argv[1]
parallel.PARALLEL_FROM = 4
pool.EAGER_SHARDS = 2  # rank 4 is opened, and found damaged, by the read
with tview.open_run(path, skip_bad_shards=True) as run:
    out = {"processes": parallel.processes_for(len(run.ranks)), "before": run.ranks}
    split = run.stat_across_ranks("grad_norm", 1)
    out.update(split_problems=run.problems, split_after=run.ranks)
parallel.PARALLEL_FROM = 10**9
with tview.open_run(path, skip_bad_shards=True) as run:
    whole = run.stat_across_ranks("grad_norm", 1)
    out.update(whole_problems=run.problems, whole_after=run.ranks)
out["keys"] = [list(split), list(whole)]
out["same"] = all(np.array_equal(split[r][0], whole[r][0]) and np.array_equal(split[r][1], whole[r][1])
                  for r in whole)
out["rank4_points"] = len(split[4][0])
print(json.dumps(out))
