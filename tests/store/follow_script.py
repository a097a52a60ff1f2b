"""A follower for the kill tests: opens a run again and again while its writer starts, for up to SECONDS or
until rank 0 has steps, and prints one REPORT line (JSON): how each try ended."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import tview  # noqa: E402


def _try_once(run_dir: str) -> tuple[str, str]:
    """('data', n steps) | ('no-run', msg) | ('not-ready', msg) | ('corrupt', msg) | ('other', type: msg)."""
    try:
        with tview.open_run(run_dir) as run:
            if 0 not in run.ranks:
                return "not-ready", run.problems.get(0, "no rank 0 yet")
            return "data", str(len(run.steps(0)))
    except tview.NotARunError as exc:
        return "no-run", str(exc)
    except tview.CorruptShardError as exc:
        return "corrupt", str(exc)
    except tview.TviewError as exc:
        return "not-ready", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - the test checks which
        return "other", f"{type(exc).__name__}: {exc}"


def follow(run_dir: str, seconds: float) -> dict:
    counts, examples = {}, {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        kind, msg = _try_once(run_dir)
        counts[kind] = counts.get(kind, 0) + 1
        examples.setdefault(kind, msg[:400])
        if kind == "data" and int(msg) > 0:
            break
        time.sleep(0.002)
    return {"counts": counts, "examples": examples}


if __name__ == "__main__":
    print("REPORT " + json.dumps(follow(sys.argv[1], float(sys.argv[2]))), flush=True)
