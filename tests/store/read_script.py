"""Read a run the way a user does (its own process, so a test can put a deadline on it) and print one REPORT
line (JSON): steps and status of rank 0, and every read that raised, with the exception's type."""

import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import tview  # noqa: E402
from tview.cli import info_text  # noqa: E402


def _err(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "tview": isinstance(exc, tview.TviewError),
            "corrupt": isinstance(exc, tview.CorruptShardError), "msg": str(exc)[:500]}


def _try(report: dict, what: str, fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the test checks which
        report["errors"].append(dict(_err(exc), read=what))
        return None


def read(run_dir: str) -> dict:
    report = {"errors": []}
    run = _try(report, "open_run", lambda: tview.open_run(run_dir))
    if run is None:
        return report
    steps = _try(report, "steps", lambda: run.steps(0))
    report["steps"] = None if steps is None else [int(s) for s in steps]
    status = _try(report, "rank_status", run.rank_status) or {}
    report["closed"] = status.get(0, {}).get("closed")
    report["last_step"] = status.get(0, {}).get("last_step")
    for name in _try(report, "scalar_names", lambda: run.scalar_names(0)) or []:
        _try(report, f"scalar {name}", functools.partial(run.scalar, name, 0))
    for name in run.stat_names():
        s, m = _try(report, f"stat_matrix {name}", functools.partial(run.stat_matrix, name, 0)) or (None, None)
        if s is not None and steps is not None and len(s) and not set(s.tolist()) <= set(steps.tolist()):
            report["errors"].append({"type": "Inconsistent", "tview": False, "read": f"stat_matrix {name}",
                                     "msg": f"steps {s.tolist()} not among the scalar steps"})
    for kind in run.hist_kinds():
        for layer in run.layers:
            _try(report, f"histogram {kind} {layer}", functools.partial(run.histogram, kind, layer, 0))
    _try(report, "snapshot_steps", lambda: run.snapshot_steps(0))
    _try(report, "first_nonfinite", lambda: run.first_nonfinite(0))
    report["info"] = _try(report, "info_text", lambda: info_text(run_dir))
    run.close()
    return report


if __name__ == "__main__":
    print("REPORT " + json.dumps(read(sys.argv[1])), flush=True)
