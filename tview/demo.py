"""The demo: a LeNet-5-style CNN learning noisy handwritten digits (scikit-learn's) across gloo ranks, recorded;
optionally with one injected fault (`tview demo --fault nan|straggler|dead`)."""

from __future__ import annotations

import math
import os
import socket
import time

EXAMPLES_PER_RANK = 300  # each rank trains on its own 300 digits: few enough that learning takes most of the run
NOISE = 1.0              # std of the Gaussian noise added to every batch (inputs span [-1, 1])
SHIFT = 2                # each batch moved by up to this many pixels each way
WARMUP = 0.05            # of the steps: the learning rate rises linearly, then follows a cosine down to 0
LR = 0.02                # the peak learning rate (SGD with momentum 0.9)
FAULTS = {
    "nan": "rank 1 gets one NaN pixel in its input batch at the fault step (the NaN then spreads through DDP)",
    "straggler": "rank 1 sleeps 15 ms before each step from the fault step on (a slow data loader)",
    "dead": "fc1's bias set to -50 on every rank at the fault step: relu3 outputs only zeros from then on",
}
FAULT_AT = 0.4  # the fault starts at this fraction of the steps
STRAGGLE_SECONDS = 0.015


def load_digits_tensors(size: int = 16):
    """The 1,797 8x8 digits that ship inside scikit-learn, scaled to [0, 1], upsampled to size x size,
    split into train (first 1,597) and held-out (last 200). Nothing is downloaded."""
    import torch
    import torch.nn.functional as F

    images, target = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(target, dtype=torch.long)
    return (x[:1597], y[:1597]), (x[1597:], y[1597:])


def digits_arrays():
    """scikit-learn's digits as (images [1797, 8, 8], labels [1797]): read from the file that `load_digits` reads,
    without importing scikit-learn (about 1.5 s of CPU in each of the demo's rank processes, which import nothing
    else of it); through `load_digits` where that file is not found."""
    import gzip
    import importlib.util

    import numpy as np
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    folders = spec.submodule_search_locations if spec is not None else None
    path = os.path.join(folders[0], "datasets", "data", "digits.csv.gz") if folders else ""
    if not os.path.exists(path):
        from sklearn.datasets import load_digits
        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")  # a row: 64 pixel values, then the label
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress_steps(steps: int, parts: int = 10) -> set[int]:
    """The step counts (1-based) at which rank 0 reports progress: about every 10% of `steps`, and the last."""
    return {max(1, round(steps * k / parts)) for k in range(1, parts + 1)}


def lr_factor(step: int, steps: int) -> float:
    """The learning rate's multiplier at `step`: a linear warm-up over WARMUP of the steps, then a cosine to 0."""
    warm = max(1, round(WARMUP * steps))
    return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def noisy_batch(x, idx, gen):
    """The examples `idx` of x, shifted together by up to SHIFT pixels and with fresh Gaussian noise: the task
    stays hard enough that the network keeps learning through most of the demo."""
    import torch
    dx, dy = torch.randint(-SHIFT, SHIFT + 1, (2,), generator=gen).tolist()
    batch = torch.roll(x[idx], (dx, dy), (2, 3))
    return batch + NOISE * torch.randn(batch.shape, generator=gen)


class Fault:
    """One injected fault (a FAULTS key, or None for none) from step `at` on, on this rank."""

    def __init__(self, kind: str | None, rank: int, at: int):
        if kind is not None and kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(FAULTS)}")
        self.kind, self.rank, self.at = kind, rank, at

    def before_forward(self, step: int, batch):
        """The batch this rank trains on (a NaN in it for 'nan'); sleeps for 'straggler'."""
        if self.kind == "nan" and self.rank == 1 and step == self.at:
            batch = batch.clone()
            batch[0, 0, 0, 0] = float("nan")
        if self.kind == "straggler" and self.rank == 1 and step >= self.at:
            time.sleep(STRAGGLE_SECONDS)
        return batch

    def before_step(self, step: int, model) -> None:
        """'dead': fc1's bias pushed far below zero on every rank (the replicas stay equal), once."""
        if self.kind == "dead" and step == self.at:
            import torch
            with torch.no_grad():
                model.fc1.bias.fill_(-50.0)


def train_rank(rank: int, world_size: int, out: str, steps: int, every: int, snapshot_every: int,
               batch: int, port: int, mode: str = "new", lr: float = LR, fault: str | None = None) -> None:
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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps))
    (x, y), (x_held, y_held) = load_digits_tensors()
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank draws its own batches and noise
    mine = torch.arange(rank, len(x), world_size)[:EXAMPLES_PER_RANK]
    injected = Fault(fault, rank, int(FAULT_AT * steps))
    # the probe batch: 16 held-out digits without noise (its feature maps show what each filter picks out); the
    # default preset, with activation statistics, histograms and the trajectory on every 5th
    # recorded step (the preset's 40th would leave a short demo few of them to show)
    rec = tview.Recorder(ddp, out, every=every, snapshot_every=snapshot_every, probe_batch=(x_held[:16], y_held[:16]),
                         preset=get_preset("default", detail_every=5), optimizer=opt, mode=mode,
                         config={"demo": "noisy-digits-lenet5", "batch_per_rank": batch, "steps": steps, "lr": lr,
                                 "examples_per_rank": EXAMPLES_PER_RANK, "noise": NOISE, "fault": fault or "none",
                                 "fault_step": injected.at if fault else None})
    milestones = progress_steps(steps)
    t0 = time.time()
    with rec:
        for step in range(steps):
            idx = mine[torch.randint(len(mine), (batch,), generator=gen)]
            inputs = injected.before_forward(step, noisy_batch(x, idx, gen))
            opt.zero_grad()
            out_logits = ddp(inputs)
            loss = F.cross_entropy(out_logits, y[idx])
            loss.backward()
            injected.before_step(step, model)
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
             batch: int = 32, mode: str = "new", fault: str | None = None) -> float:
    """Train the demo across `ranks` processes (with one injected fault if `fault` names one of FAULTS);
    returns the seconds it took."""
    Fault(fault, 0, 0)  # an unknown fault is refused here, not in every rank
    port = free_port()
    t0 = time.time()
    args = (out, steps, every, snapshot_every, batch, port, mode, LR, fault)
    if ranks == 1:
        train_rank(0, 1, *args)
    else:
        import torch.multiprocessing as mp
        mp.start_processes(train_rank, args=(ranks, *args), nprocs=ranks, join=True, start_method=rank_start_method())
    return time.time() - t0


def rank_start_method() -> str:
    """How the rank processes start: forked from a server process that imported torch and tview once (about 3 s of
    CPU a rank saved, and the server serves every later run_demo of this process), where the platform forks;
    as fresh interpreters otherwise. The server forks from a process of its own, which runs no threads."""
    import multiprocessing
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.set_forkserver_preload(["torch", "torch.distributed", "torch.optim", "tview", "tview.demo",
                                            "tview.models"])  # ignored once the server runs
    return "forkserver"
