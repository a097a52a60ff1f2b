"""The recorder on a CUDA device: statistics computed on the device, one host transfer per step,
and the same numbers as on the CPU. Skipped where there is no GPU (CI has none)."""

import numpy as np
import pytest
import torch

import tview
import tview.hooks.transfer as transfer_module
from tests.conftest import TinyCNN, make_data, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def record(tmp_path, device, name, steps=21):
    torch.manual_seed(0)
    model = TinyCNN().to(device)
    x, y = (t.to(device) for t in make_data())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    transfers = []
    real, real_span = transfer_module.HostTransfer._copy, transfer_module.HostTransfer._copy_span
    transfer_module.HostTransfer._copy = staticmethod(lambda values: transfers.append(len(values)) or real(values))
    transfer_module.HostTransfer._copy_span = staticmethod(  # the filters: one span of the weight copy
        lambda base, views: transfers.append(len(views)) or real_span(base, views))
    try:
        with tview.Recorder(model, str(tmp_path / name), every=1, optimizer=opt) as rec:
            train(model, rec, steps, x, y, opt=opt)
    finally:
        transfer_module.HostTransfer._copy = staticmethod(real)
        transfer_module.HostTransfer._copy_span = staticmethod(real_span)
    return tview.open_run(str(tmp_path / name)), transfers


def test_cuda_statistics_equal_the_cpu_ones_with_one_transfer_a_step(tmp_path):
    cuda, transfers = record(tmp_path, "cuda", "gpu")
    cpu, _ = record(tmp_path, "cpu", "cpu")
    # one batched device-to-host copy per recorded step (two on snapshot steps: the values, and the filters as the
    # one span of the kept weight copy they lie in)
    assert len(transfers) == 21 + 1
    for stat in ("grad_norm", "grad_mean", "grad_max_abs", "weight_norm", "weight_sum", "update_ratio", "init_distance",
                 "act_mean", "act_zero_frac"):  # init_distance: W0 from pinned host memory on the GPU
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


def test_recording_never_makes_the_host_wait_for_the_gpu(tmp_path):
    """torch.cuda.set_sync_debug_mode("error") around training with the Recorder (every step, full preset:
    every probe, snapshots and a probe batch): any op of tview that reads a device value back raises."""
    torch.manual_seed(0)
    model = TinyCNN().cuda()
    x, y = (t.cuda() for t in make_data())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tview.Recorder(model, str(tmp_path / "r"), every=1, preset="full", optimizer=opt,
                            probe_batch=(x[:4], y[:4])) as rec:
            train(model, rec, 2, x, y, opt=opt)  # warm-up: allocations, first layout
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                train(model, rec, 5, x, y, opt=opt)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    # a sync inside recording would be caught by tview (training never stops for it) and said: nothing was said
    assert not [str(w.message) for w in caught if "tview" in str(w.message)]
    run = tview.open_run(str(tmp_path / "r"))
    assert list(run.steps()) == list(range(7)) and np.isfinite(run.stat("act_mean", "conv1")[1]).all()
    for stat in ("grad_norm", "weight_norm", "grad_max_abs"):
        assert len(run.stat(stat, "conv1")[1]) == 7 and np.isfinite(run.stat(stat, "conv1")[1]).all(), stat


def test_bf16_autocast_and_compile_on_the_gpu(tmp_path):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = TinyCNN().cuda()
    compiled = torch.compile(model)
    x, y = (t.cuda() for t in make_data())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tview.Recorder(compiled, str(tmp_path / "r"), every=1, optimizer=opt) as rec:
        for _ in range(4):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(compiled(x), y)
            loss.backward()
            opt.step()
            rec.step(loss=loss)
    assert sum(counters["graph_break"].values()) == 0
    run = tview.open_run(str(tmp_path / "r"))
    assert len(run.stat("act_zero_frac", "relu")[0]) == 4 and np.isfinite(run.stat("grad_norm", "fc")[1]).all()
