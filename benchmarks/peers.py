"""The tools tview is compared with, attached to a training loop the way their users attach them.

Each is a configuration for benchmarks/overhead.py's Trainer: `attach(model, optimizer, tmp)`
returns an object with step(loss=...) and close(). The peers are installed only for benchmarks
(`pip install tensorboard wandb`), never as tview dependencies.
"""

from __future__ import annotations

import os
import tempfile


class TensorBoardHistograms:
    """torch.utils.tensorboard.SummaryWriter: the loss, and histograms of every parameter and its
    gradient, every step (what TensorBoard users do to watch a network train)."""

    def __init__(self, model, logdir: str):
        from torch.utils.tensorboard import SummaryWriter
        self.model, self.writer, self.n = model, SummaryWriter(logdir), 0

    def step(self, loss):
        self.writer.add_scalar("loss", loss.item(), self.n)
        for name, p in self.model.named_parameters():
            self.writer.add_histogram(name, p.detach(), self.n)
            if p.grad is not None:
                self.writer.add_histogram(f"{name}/grad", p.grad.detach(), self.n)
        self.n += 1

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


_WANDB_RUN = None


class WandbWatch:
    """wandb.watch(model, log="all", log_freq=1) in offline mode, and wandb.log of the loss each step."""

    def __init__(self, model, logdir: str):
        import wandb
        global _WANDB_RUN
        os.environ.setdefault("WANDB_SILENT", "true")
        if _WANDB_RUN is None:  # one offline run per process; each model is watched in it
            _WANDB_RUN = wandb.init(mode="offline", dir=logdir, project="tview-benchmark")
        self.wandb = wandb
        wandb.watch(model, log="all", log_freq=1)

    def step(self, loss):
        self.wandb.log({"loss": loss.item()})

    def close(self):
        pass


def finish_wandb():
    global _WANDB_RUN
    if _WANDB_RUN is not None:
        _WANDB_RUN.finish()
        _WANDB_RUN = None


def tensorboard(model, opt, tmp):
    return TensorBoardHistograms(model, tempfile.mkdtemp(dir=tmp))


def wandb_watch(model, opt, tmp):
    return WandbWatch(model, tempfile.mkdtemp(dir=tmp))
