"""The Recorder in setups its authors did not build for, each a new user's short script compared with plain torch:
inference between training steps."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import tview


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def grad_norm(m):
    return float(torch.cat([p.grad.reshape(-1).double() for p in m.parameters(recurse=False)]).norm())


def weight_norm(m):
    return float(torch.cat([p.detach().reshape(-1).double() for p in m.parameters(recurse=False)]).norm())


def keep_outputs(module, outs: list):
    """Plain torch's record of the module's training outputs."""
    module.register_forward_hook(lambda mod, i, o: outs.append(o.detach().clone()) if torch.is_grad_enabled() else None)


def test_a_train_mode_forward_under_no_grad_between_steps_is_not_recorded(tmp_path):
    """`with torch.no_grad(): model(x_val)` without model.eval() (BatchNorm in train mode) is inference: its outputs
    and examples are not the training step's."""
    model, (x, y) = small_net(), data()
    x_val = data(seed=1)[0] * 5 + 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, means = [], []
    keep_outputs(model[0], outs)
    with tview.Recorder(model, str(tmp_path / "r"), every=1, optimizer=opt, preset="full") as rec:
        for _ in range(3):
            outs.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                model(x_val)
            with torch.inference_mode():
                model(x_val)
            means.append(float(torch.cat(outs).mean()))
            opt.step()
            rec.step()
    run = tview.open_run(str(tmp_path / "r"))
    np.testing.assert_allclose(run.stat("act_mean", layer="0")[1], means, rtol=1e-5)
    assert list(run.scalar("examples")[1]) == [8, 8, 8]

