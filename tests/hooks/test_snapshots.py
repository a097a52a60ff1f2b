"""Filter snapshots read from the weight copy the update ratio keeps (no copy of their own): each recorded
step's filters are that step's weights, bit for bit, on the CPU's own path and on the device path, with the
writer thread writing while training goes on."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tview
import tview.hooks.params as P
import tview.hooks.probes as probes


class ConvNet(nn.Module):
    """conv -> relu -> conv (no bias) -> ConvTranspose -> linear: filters of three layouts."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.up = nn.ConvTranspose2d(5, 3, 2, stride=2)
        self.fc = nn.Linear(3 * 16 * 16, 4)

    def forward(self, x):
        return self.fc(self.up(self.conv2(self.relu(self.conv1(x)))).flatten(1))


def train_recorded(tmp_path, steps: int, **kwargs):
    """Train `steps` steps recorded every step with a snapshot every step; the filters after each step."""
    torch.manual_seed(0)
    model = ConvNet()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 2, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    expected = []
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, snapshot_every=tview.every(1),
                        **kwargs) as rec:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            expected.append({"conv1": model.conv1.weight.detach().clone(), "conv2": model.conv2.weight.detach().clone(),
                             "up": model.up.weight.detach().transpose(0, 1).clone()})
            rec.step()
    return tview.open_run(str(tmp_path / "r")), expected


@pytest.mark.parametrize("preset", ["default", "economy"])
@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_each_snapshot_holds_the_filters_of_its_own_step(tmp_path, monkeypatch, device_path, preset):
    monkeypatch.setattr(P, "FORCE_DEVICE_PATH", device_path)
    monkeypatch.setattr(probes, "FORCE_DEVICE_PATH", device_path)
    run, expected = train_recorded(tmp_path, 12, preset=preset)
    assert list(run.snapshot_steps()) == list(range(12))
    for step, weights in enumerate(expected):
        for layer, w in weights.items():
            got_step, filters = run.filters(layer, step)
            assert got_step == step and filters.dtype == np.float32
            np.testing.assert_array_equal(filters, w.numpy(), err_msg=f"{layer} at step {step}")


def test_snapshots_are_right_when_the_writer_is_behind(tmp_path):
    """Steps much faster than the writer's flush: every snapshot still holds its own step's filters (the
    training thread waits for the copy the writer reads before it changes it)."""
    run, expected = train_recorded(tmp_path, 30, flush_seconds=5.0)
    for step in (0, 1, 2, 17, 29):
        for layer, w in expected[step].items():
            np.testing.assert_array_equal(run.filters(layer, step)[1], w.numpy(), err_msg=f"{layer} at {step}")
