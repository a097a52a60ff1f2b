"""A writer whose shard takes long to create (a CNN of many small layers: thousands of datasets), so that a
follower's tries land inside the creation. Records `steps` steps, then closes and prints DONE."""

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import tview  # noqa: E402


def main(run_dir: str, layers: int, steps: int):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Conv2d(2, 2, 1), nn.ReLU())])
    x = torch.randn(4, 2, 4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tview.Recorder(model, run_dir, every=1, preset="full", snapshot_every=1, probe_batch=x, optimizer=opt) as rec:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
            print("STEP", flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
