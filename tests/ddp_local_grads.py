"""Two gloo ranks train a small CNN under DDP with the Recorder for a few steps; each rank also
recomputes, with a plain (non-DDP) copy of the model on the same batch, its own gradient before the
all-reduce, and saves those norms next to the run (reference.npz) for the test to compare."""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tview  # noqa: E402
from tests.conftest import TinyCNN  # noqa: E402
from tview.demo import free_port  # noqa: E402

STEPS = 4


def rank_main(rank, world, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = TinyCNN()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
    reference = {}
    with tview.Recorder(ddp, out, every=1, optimizer=opt) as rec:
        for step in range(STEPS):
            x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
            plain = TinyCNN()
            plain.load_state_dict(model.state_dict())
            F.cross_entropy(plain(x), y).backward()  # this rank's gradient, no all-reduce
            for name in ("conv1", "bn1", "conv2", "fc"):
                module = dict(plain.named_modules())[name]
                sq = sum(float(p.grad.double().pow(2).sum()) for p in module.parameters(recurse=False))
                reference[f"{name}/{step}"] = np.sqrt(sq)
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
            rec.step()
    np.savez(os.path.join(out, f"reference-{rank}.npz"), **reference)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(rank_main, args=(2, sys.argv[1], free_port()), nprocs=2)
