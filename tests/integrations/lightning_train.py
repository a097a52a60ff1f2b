"""A user's Lightning script: a tiny CNN trained by lightning.Trainer with TviewCallback (run by the tests)."""

import argparse
import json

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tview.integrations.lightning import TviewCallback


class Digits(L.LightningModule):
    """conv -> relu -> linear; keeps the loss and learning rate of every training_step it ran."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        self.fail_at = fail_at
        self.seen = {"losses": [], "lrs": []}

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError(f"planned failure at batch {batch_idx}")
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        self.seen["losses"].append(float(loss.detach()))
        self.seen["lrs"].append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--strategy", default="ddp")
    ap.add_argument("--accumulate", type=int, default=2)
    ap.add_argument("--fail-at", type=int, default=-1)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    module = Digits(a.fail_at)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=a.strategy, max_epochs=1,
                        accumulate_grad_batches=a.accumulate, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TviewCallback(a.out, every=1, snapshot_every=2, probe_batch=x[:2])])
    try:
        trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=4))
    finally:
        with open(f"{a.out}.rank{trainer.global_rank}.json", "w") as f:
            json.dump(module.seen, f)


if __name__ == "__main__":
    main()
