"""A training process for the disk-full tests: records a tiny CNN into run_dir and prints one REPORT line (JSON).

    fill RUN_DIR       train until the disk is full, then 250 more steps, then close
    construct RUN_DIR  make a Recorder on an already full disk
    rmdir RUN_DIR      train, remove the run folder, train on, close
"""

import json
import os
import shutil
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import tview  # noqa: E402
from tests.conftest import TinyCNN, make_data  # noqa: E402


def _err(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "tview": isinstance(exc, tview.TviewError), "msg": str(exc)[:500]}


class Trainer:
    """TinyCNN, its data and optimizer, and a Recorder writing every step (snapshots too: the disk fills fast)."""

    def __init__(self, run_dir: str):
        torch.manual_seed(0)
        self.model = TinyCNN()
        self.x, self.y = make_data()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.rec = tview.Recorder(self.model, run_dir, every=1, snapshot_every=1, preset="full",
                                  probe_batch=self.x[:4], optimizer=self.opt, flush_seconds=0.1)
        self.step = 0

    def train_step(self) -> dict | None:
        """One step; the exception rec.step() raised, if any."""
        self.opt.zero_grad()
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.step += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.rec.step(loss=loss)
            except Exception as exc:  # noqa: BLE001 - the test checks which
                return _err(exc)
        told = [w for w in caught if issubclass(w.category, Warning) and "write" in str(w.message).lower()]
        return {"type": "warning", "tview": True, "msg": str(told[0].message)[:500]} if told else None

    def close(self) -> dict | None:
        try:
            self.rec.close()
        except Exception as exc:  # noqa: BLE001
            return _err(exc)
        return None

    def after_failure(self, report: dict, n: int = 250):
        """n more steps after the first failure (each: did it raise or warn?), then close()."""
        report["later"] = [self.train_step() for _ in range(n)]
        report["close"] = self.close()


def fill(run_dir: str, max_steps: int = 5000) -> dict:
    t = Trainer(run_dir)
    report = {"first_error": None, "last_ok_step": -1}
    for _ in range(max_steps):
        err = t.train_step()
        if err:
            report["first_error"], report["first_error_at"] = err, t.step - 1
            break
        report["last_ok_step"] = t.step - 1
        time.sleep(0.002)
    if report["first_error"] is None:  # the error may come only with the last write, at close()
        report["first_error"] = report["close_error"] = t.close()
        return report
    t.after_failure(report)
    return report


def construct(run_dir: str) -> dict:
    try:
        Trainer(run_dir)
    except Exception as exc:  # noqa: BLE001
        return {"error": _err(exc)}
    return {"error": None}


def rmdir(run_dir: str, steps: int = 20) -> dict:
    t = Trainer(run_dir)
    for _ in range(steps):
        t.train_step()
    t.rec.flush()
    time.sleep(0.3)
    shutil.rmtree(run_dir)
    report = {"removed_at": t.step - 1, "errors": []}
    for _ in range(steps):
        report["errors"].append(t.train_step())
        time.sleep(0.02)
    report["flush"] = _call(t.rec.flush)
    report["close"] = t.close()
    return report


def _call(fn) -> dict | None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test checks which
        return _err(exc)
    return None


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    out = {"fill": fill, "construct": construct, "rmdir": rmdir}[mode](path)
    print("REPORT " + json.dumps(out), flush=True)
