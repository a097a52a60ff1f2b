"""Training overhead of the Recorder: the same CNN trained with and without it, runs interleaved.

Prints the median step-time ratio (recorder / plain) per configuration. Usage:
    python benchmarks/overhead.py [--model resnet|lenet] [--rounds 15] [--block 20] [--batch 64]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import tview
from tview.models import LeNet5, SmallResNet


def make(model_name: str, batch: int):
    torch.manual_seed(0)
    if model_name == "resnet":
        return SmallResNet(), torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return LeNet5(), torch.randn(batch, 1, 16, 16), torch.randint(0, 10, (batch,))


def recorder(**kwargs):
    """A configuration: a tview Recorder with these arguments, in its own folder under tmp."""
    return lambda model, opt, tmp: tview.Recorder(model, tempfile.mkdtemp(dir=tmp), optimizer=opt, **kwargs)


class Trainer:
    """One configuration: its own copy of the model and optimizer, and (maybe) a logging tool with
    step(loss=...) and close(), made by `attach(model, optimizer, tmp)`."""

    def __init__(self, base, attach, tmp: str):
        self.model = copy.deepcopy(base)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.rec = attach(self.model, self.opt, tmp) if attach is not None else None

    def steps(self, x, y, n: int) -> float:
        """Wall time of n training steps, and of writing what they logged.

        A tool with flush() is flushed inside the timed region: its background writer's work
        is charged to it, not to whichever configuration happens to run next (on 2 cores
        there is no idle core for that work to hide on).
        """
        t0 = time.perf_counter()
        for _ in range(n):
            self.opt.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            if self.rec is not None:
                self.rec.step(loss=loss)
        if hasattr(self.rec, "flush"):
            self.rec.flush()
        return time.perf_counter() - t0

    def close(self) -> int:
        if self.rec is None:
            return 0
        self.rec.close()
        return getattr(self.rec, "dropped", 0)


CONFIGS = {
    "plain": None,
    "default, every step": recorder(every=1),
    "default, every 10th step": recorder(every=10),
    "economy, every step": recorder(every=1, preset="economy"),
    "full, every step": recorder(every=1, preset="full"),
}


def measure(model_name: str, rounds: int, block: int, batch: int, configs=CONFIGS, seed: int = 0) -> dict[str, list[float]]:
    """Per configuration, the time of one block of `block` steps in each round.

    Every configuration trains side by side in one process; each round runs one block of each,
    in a shuffled order, so the machine's slow and fast moments fall on all of them alike.
    """
    base, x, y = make(model_name, batch)
    times = {name: [] for name in configs}
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: Trainer(base, attach, tmp) for name, attach in configs.items()}
        for t in trainers.values():
            t.steps(x, y, 3)  # warm-up
        for _ in range(rounds):
            order = list(trainers)
            rng.shuffle(order)
            for name in order:
                times[name].append(trainers[name].steps(x, y, block))
        for name, t in trainers.items():
            if t.close():
                print(f"  note: {name}: {t.rec.dropped} recorded steps dropped by the writer", file=sys.stderr)
    return times


def ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """Median over rounds of (configuration block time / plain block time of the same round)."""
    plain = times["plain"]
    return {name: statistics.median(m / p for m, p in zip(ts, plain)) for name, ts in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("resnet", "lenet"), default="resnet")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--block", type=int, default=20, help="steps per block (a multiple of 10; each block "
                    "ends with a flush, so shorter blocks flush more often than the writer would)")
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args(argv)
    times = measure(a.model, a.rounds, a.block, a.batch)
    print(f"model={a.model} batch={a.batch} rounds={a.rounds} block={a.block} threads={torch.get_num_threads()}")
    print(f"plain median step: {statistics.median(times['plain']) / a.block * 1e3:.1f} ms")
    targets = {"default, every step": 1.05, "default, every 10th step": 1.01}
    for name, r in ratios(times).items():
        t = targets.get(name)
        verdict = "" if t is None else (f"  target <= {t:.2f}x: " + ("met" if r <= t else "MISSED"))
        print(f"{name:28s} {r:6.3f}x{verdict}")


if __name__ == "__main__":
    main()
