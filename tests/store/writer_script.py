"""A training process for the store tests: records `steps` steps, `delay` seconds apart, then
prints DONE; or, with `fail_after_bytes`, limits its file size so that writing the shard fails."""

import os
import resource
import signal
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import tview  # noqa: E402
from tests.conftest import TinyCNN, make_data  # noqa: E402


def main(run_dir, steps, delay, fsize_limit=0):
    if fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write() fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = tview.Recorder(model, run_dir, every=1, snapshot_every=5, probe_batch=x[:4], optimizer=opt)
    try:
        for step in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.step(loss=loss)
            print(f"STEP {step}", flush=True)
            time.sleep(delay)
        rec.close()
    except tview.StoreWriteError as exc:
        print(f"WRITE_ERROR {exc}", flush=True)
        sys.exit(3)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
