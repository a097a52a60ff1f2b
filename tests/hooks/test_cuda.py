"""The recorder on a CUDA device: statistics computed on the device, one host transfer per step,
and the same numbers as on the CPU. Skipped where there is no GPU (CI has none)."""

import numpy as np
import pytest
import torch

import tview
import tview.hooks.recorder as recorder_module
from tests.conftest import TinyCNN, make_data, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def record(tmp_path, device, name, steps=21):
    torch.manual_seed(0)
    model = TinyCNN().to(device)
    x, y = (t.to(device) for t in make_data())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    transfers = []
    with tview.Recorder(model, str(tmp_path / name), every=1, optimizer=opt) as rec:
        if device == "cuda":
            real = recorder_module._to_host
            recorder_module._to_host = lambda ts, *a: transfers.append(len(ts)) or real(ts, *a)
        try:
            train(model, rec, steps, x, y, opt=opt)
        finally:
            if device == "cuda":
                recorder_module._to_host = real
    return tview.open_run(str(tmp_path / name)), transfers


def test_cuda_statistics_equal_the_cpu_ones_with_one_transfer_a_step(tmp_path):
    cuda, transfers = record(tmp_path, "cuda", "gpu")
    cpu, _ = record(tmp_path, "cpu", "cpu")
    assert len(transfers) == 21  # one batched device-to-host transfer per recorded step
    for stat in ("grad_norm", "grad_mean", "grad_max_abs", "weight_norm", "update_ratio", "act_mean", "act_zero_frac"):
        for layer in ("conv1", "bn1", "conv2", "fc"):
            a, b = cuda.stat(stat, layer)[1], cpu.stat(stat, layer)[1]
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6, equal_nan=True, err_msg=f"{stat} {layer}")
    _, _, hc = cuda.histogram("grad", "conv2")
    _, _, hp = cpu.histogram("grad", "conv2")
    assert hc.sum() == hp.sum() and np.abs(hc.astype(int) - hp.astype(int)).sum() <= 0.02 * hp.sum()
    assert "cuda_allocated_bytes" in cuda.scalar_names()


def test_cuda_memory_is_not_held_by_the_recorder_after_close(tmp_path):
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    record(tmp_path, "cuda", "gpu", steps=3)
    import gc
    gc.collect()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() - before < 1 << 20
