"""The demo: a LeNet-5-style CNN trained on scikit-learn's handwritten digits across gloo ranks, recorded."""

from __future__ import annotations

import os
import socket
import time


def load_digits_tensors(size: int = 16):
    """The 1,797 8x8 digits that ship inside scikit-learn, scaled to [0, 1], upsampled to size x size,
    split into train (first 1,597) and held-out (last 200). Nothing is downloaded."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(digits.target, dtype=torch.long)
    return (x[:1597], y[:1597]), (x[1597:], y[1597:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress_steps(steps: int, parts: int = 10) -> set[int]:
    """The step counts (1-based) at which rank 0 reports progress: about every 10% of `steps`, and the last."""
    return {max(1, round(steps * k / parts)) for k in range(1, parts + 1)}


def train_rank(rank: int, world_size: int, out: str, steps: int, every: int, snapshot_every: int,
               batch: int, port: int, mode: str = "new", lr: float = 0.05) -> None:
    """One rank of the demo (also runnable alone with world_size=1)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import tview
    from tview.hooks.schedules import get_preset
    from tview.models import LeNet5

    torch.set_num_threads(1)
    if world_size > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # same initial weights on every rank
    model = LeNet5()
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    (x, y), (x_held, y_held) = load_digits_tensors()
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank draws its own batches
    mine = torch.arange(rank, len(x), world_size)
    # the default preset, with activation statistics, histograms and the trajectory on every 5th
    # recorded step (the preset's 40th would leave a short demo few of them to show)
    rec = tview.Recorder(ddp, out, every=every, snapshot_every=snapshot_every, probe_batch=(x_held[:16], y_held[:16]),
                         preset=get_preset("default", detail_every=5), optimizer=opt, mode=mode,
                         config={"demo": "digits-lenet5", "batch_per_rank": batch, "steps": steps, "lr": lr})
    milestones = progress_steps(steps)
    t0 = time.time()
    with rec:
        for step in range(steps):
            idx = mine[torch.randint(len(mine), (batch,), generator=gen)]
            opt.zero_grad()
            out_logits = ddp(x[idx])
            loss = F.cross_entropy(out_logits, y[idx])
            loss.backward()
            opt.step()
            sched.step()
            acc = (out_logits.argmax(1) == y[idx]).float().mean()
            rec.step(loss=loss, accuracy=acc)
            if rank == 0 and step + 1 in milestones:
                print(f"  step {step + 1}/{steps} ({100 * (step + 1) // steps}%)  loss {loss.item():.3f}  "
                      f"accuracy {acc.item():.2f}  {time.time() - t0:.1f} s", flush=True)
    if world_size > 1:
        dist.destroy_process_group()


def run_demo(out: str = "runs/demo", ranks: int = 2, steps: int = 1500, every: int = 2, snapshot_every: int = 50,
             batch: int = 32, mode: str = "new") -> float:
    """Train the demo across `ranks` processes; returns the seconds it took."""
    port = free_port()
    t0 = time.time()
    if ranks == 1:
        train_rank(0, 1, out, steps, every, snapshot_every, batch, port, mode)
    else:
        import torch.multiprocessing as mp
        mp.spawn(train_rank, args=(ranks, out, steps, every, snapshot_every, batch, port, mode), nprocs=ranks,
                 join=True)
    return time.time() - t0
