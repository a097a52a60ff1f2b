"""Adding a statistic is one probe class (CONTRIBUTING.md): defined in a test here, it reaches the Python
API, `tview info`, the dashboard's menus (they list run.stat_names()) and ParaView's arrays, with no edit
anywhere else."""

import numpy as np
import pytest
import torch

import tview
from tests.conftest import TinyCNN, make_data, train
from tview.hooks.param_probes import ParamProbe
from tview.hooks.probes import EVERY, unregister
from tview.store.schema import Column


@pytest.fixture
def weight_mean_abs():
    class WeightMeanAbs(ParamProbe):
        """Mean |W| per layer: a statistic added in one class."""

        table = "weight_mean_abs"
        reads = "weight"
        columns = (Column("weight_mean_abs"),)

        @classmethod
        def cadence_for(cls, preset):
            return EVERY

        def compute(self, step):
            return {"abs_sum": step.ctx.powsums(step.weights, 1)}  # per parameter tensor, one op

        def finalize(self, p, ctx):
            return {"weight_mean_abs": ctx.per_layer_sum(p["abs_sum"]) / ctx.counts}

    yield WeightMeanAbs
    unregister(WeightMeanAbs)


def test_a_new_probe_class_is_all_a_statistic_needs(tmp_path, weight_mean_abs):
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = make_data()
    rec = tview.Recorder(model, str(tmp_path / "r"), every=1, preset="economy")
    train(model, rec, 3, x, y)
    rec.close()
    run = tview.open_run(str(tmp_path / "r"))
    assert "weight_mean_abs" in run.stat_names()  # the dashboard's statistic menus list these
    steps, values = run.stat("weight_mean_abs", "conv2")
    w = torch.cat([model.conv2.weight.detach().reshape(-1), model.conv2.bias.detach().reshape(-1)])
    assert list(steps) == [0, 1, 2] and values[-1] == pytest.approx(w.abs().mean().item(), rel=1e-5)
    from tview.cli import info_text
    assert "weight_mean_abs" in info_text(str(tmp_path / "r"))
    from tview.render import scene
    assert "weight_mean_abs" in scene.statistic_arrays(run)  # the ParaView reader's arrays
    p = scene.network(run, 0, None)
    assert np.isfinite(p.arrays["weight_mean_abs"][p.arrays["layer"] == 0]).all()
