"""TviewCallback under a real lightning.Trainer: 2 CPU processes (strategy="ddp", gloo), as a user runs it."""

import json
import os
import subprocess

import numpy as np
import pytest

pytest.importorskip("lightning")

import tview  # noqa: E402
from tests.conftest import PY, REPO, python_env  # noqa: E402
from tview.errors import ConfigError  # noqa: E402
from tview.integrations.lightning import TviewCallback  # noqa: E402

SCRIPT = os.path.join(REPO, "tests", "integrations", "lightning_train.py")


def fit(tmp_path, *args):
    """Run the user's script (it launches its second rank itself); (run path, what each rank's module saw)."""
    out = str(tmp_path / "run")
    proc = subprocess.run([PY, SCRIPT, out, *args], cwd=str(tmp_path), env=python_env(), capture_output=True,
                          text=True, timeout=240)
    seen = {}
    for rank in (0, 1):
        with open(f"{out}.rank{rank}.json") as f:
            seen[rank] = json.load(f)
    return out, proc, seen


def step_means(losses, k):
    """The loss of each optimizer step over k micro-batches, in float32 as Lightning computes it."""
    x = np.asarray(losses, dtype=np.float32).reshape(-1, k)
    return (x / np.float32(k)).sum(axis=1, dtype=np.float32)


@pytest.mark.slow
def test_ddp_fit_records_every_rank(tmp_path):
    out, proc, seen = fit(tmp_path, "--accumulate", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tview.open_run(out)
    assert run.world_size == 2 and run.ranks == [0, 1]
    status = run.rank_status()
    for rank in (0, 1):
        assert status[rank]["closed"] and status[rank]["problem"] is None
        assert len(seen[rank]["losses"]) == 8  # 64 examples / 2 ranks / batch 4
        steps, loss = run.scalar("loss", rank)
        assert steps.tolist() == [0, 1, 2, 3]  # one step per optimizer step: 8 batches accumulated by 2
        assert np.array_equal(loss.astype(np.float32), step_means(seen[rank]["losses"], 2))
        steps, lr = run.scalar("lr", rank)
        assert lr.tolist() == seen[rank]["lrs"][::2] == [0.1, 0.05, 0.025, 0.0125]  # as each step used it
        assert run.scalar("examples", rank)[1].tolist() == [8.0] * 4
    assert seen[0]["losses"] != seen[1]["losses"]  # each rank trained on its own share of the data
    w0, w1 = (run.stat("weight_norm", "net.0", rank)[1] for rank in (0, 1))
    assert len(w0) == 4 and np.array_equal(w0, w1)  # DDP kept the replicas equal
    run.close()


@pytest.mark.slow
def test_exception_mid_fit_leaves_closed_readable_shards(tmp_path):
    out, proc, seen = fit(tmp_path, "--accumulate", "2", "--fail-at", "5")
    assert proc.returncode != 0 and "planned failure at batch 5" in proc.stderr
    assert "tview: training stopped by RuntimeError" in proc.stderr
    run = tview.open_run(out)
    for rank in run.ranks:
        assert run.rank_status()[rank]["closed"]
        steps, loss = run.scalar("loss", rank)
        assert steps.tolist() == [0, 1]  # batches 0-3; batch 4 was accumulating when batch 5 failed
        assert np.array_equal(loss.astype(np.float32), step_means(seen[rank]["losses"][:4], 2))
    assert run.ranks == [0, 1]
    run.close()


def test_arguments_checked_when_made(tmp_path):
    with pytest.raises(ConfigError, match="optimizer"):
        TviewCallback(tmp_path / "run", optimizer=None)
    with pytest.raises(ConfigError, match="every"):
        TviewCallback(tmp_path / "run", every="often")
    with pytest.raises(ConfigError, match="run_dir"):
        TviewCallback(42)
    assert TviewCallback(tmp_path / "run", every=5, preset="economy").run_dir == str(tmp_path / "run")


def test_manual_optimization_two_optimizers_in_process(tmp_path):
    """One recorder step per training batch; each optimizer's learning rate; the loss training_step returned."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class TwoOptimizers(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.features = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten())
            self.head = nn.Linear(3 * 8 * 8, 10)
            self.losses = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.head(self.features(x)), y)
            self.losses.append(float(loss.detach()))
            for opt in self.optimizers():
                opt.zero_grad()
            self.manual_backward(loss)
            for opt in self.optimizers():
                opt.step()
            return loss

        def configure_optimizers(self):
            return [torch.optim.SGD(self.features.parameters(), lr=0.1),
                    torch.optim.Adam([{"params": self.head.weight}, {"params": self.head.bias, "lr": 0.002}], lr=0.01)]

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
    module = TwoOptimizers()
    out = tmp_path / "run"
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TviewCallback(out, every=1, preset="economy")])
    trainer.fit(module, DataLoader(data, batch_size=4))
    run = tview.open_run(str(out))
    assert run.rank_status()[0]["closed"] and run.world_size == 1
    steps, loss = run.scalar("loss", 0)
    assert steps.tolist() == [0, 1, 2, 3]  # 4 batches, each stepping both optimizers
    assert np.array_equal(loss.astype(np.float32), np.float32(module.losses))
    assert run.scalar("lr", 0)[1].tolist() == [0.1] * 4
    # every param group of every optimizer, in order: SGD's one group, then Adam's two
    assert run.scalar("lr/1", 0)[1].tolist() == [0.01] * 4 and run.scalar("lr/2", 0)[1].tolist() == [0.002] * 4
    assert run.layers == ["features.0", "features.1", "head"]
    run.close()
