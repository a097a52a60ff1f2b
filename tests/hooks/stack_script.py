"""A user's distributed training script with the Recorder, on 2 gloo ranks: `ddp_frozen` (DDP with a frozen
first conv, the fine-tuning classic; variants: as on torch before 2.11, tview's local-gradient hooks failing),
`ddp_no_sync` (gradient accumulation over two micro-batches, the first under
DDP's no_sync()), `fsdp2` (fully_shard) or `fsdp2_bf16` (fully_shard with a bfloat16 MixedPrecisionPolicy). Each
rank saves the plain-torch numbers the test compares with (its local gradient norm before the all-reduce, the full
model's gradient and weight norms)."""

import contextlib
import functools
import os
import sys
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import tview  # noqa: E402
from tests.conftest import TinyCNN  # noqa: E402
from tview.demo import free_port  # noqa: E402

STEPS = 4


def batch(rank, step):
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def ddp_frozen(rank, out, variant=""):
    """`variant`: "" as it is; "no_powsum" as on torch 2.5-2.10 (no torch._foreach_powsum); "hook_fails": tview's
    norms in DDP's communication hook raise; "param_hook_fails": the user's own comm hook on the model, tview's
    local gradients from parameter hooks, which raise. ref["said"]: the warnings."""
    torch.manual_seed(0)
    model = TinyCNN()
    model.conv1.requires_grad_(False)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.05)
    ref = {}
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _break(variant, ddp)
        with tview.Recorder(ddp, out, every=1, optimizer=opt) as rec:
            for step in range(STEPS):
                x, y = batch(rank, step)
                plain = TinyCNN()
                plain.load_state_dict(model.state_dict())
                F.cross_entropy(plain(x), y).backward()
                ref[f"local/{step}"] = float(plain.conv2.weight.grad.double().square().sum()
                                             + plain.conv2.bias.grad.double().square().sum()) ** 0.5
                opt.zero_grad()
                loss = F.cross_entropy(ddp(x), y)
                loss.backward()
                ref[f"grad/{step}"] = float(torch.cat([model.conv2.weight.grad.reshape(-1),
                                                       model.conv2.bias.grad]).double().norm())
                opt.step()
                rec.step(loss=loss)
    ref["said"] = np.array([str(w.message) for w in said] or [""])
    return ref


def _break(variant, ddp):
    """Break tview as `variant` says."""
    from tview.hooks import foreach, recorder, timing

    def injected(*args):
        raise RuntimeError("injected failure")

    if variant == "no_powsum":
        foreach.HAS_POWSUM = False
    elif variant == "hook_fails":
        timing.squared_norms = injected
    elif variant == "param_hook_fails":
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        ddp.register_comm_hook(dist.group.WORLD, allreduce_hook)  # the user's: tview takes parameter hooks
        recorder.live_scale = injected


def fsdp2(rank, out):
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    model = TinyCNN()
    twin = TinyCNN()
    twin.load_state_dict(model.state_dict())  # unsharded, on the same data: what the norms must equal
    model.bn1.eval(), twin.bn1.eval()  # batch statistics of a rank's half batch are not the whole batch's
    for m in (model.conv1, model.conv2, model.fc):
        fully_shard(m, mesh=cpu_mesh())
    fully_shard(model, mesh=cpu_mesh())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    ref = {}
    with tview.Recorder(model, out, every=1, optimizer=opt, preset="full") as rec:
        for step in range(STEPS):
            xs, ys = zip(*(batch(r, step) for r in range(2)))
            x, y = batch(rank, step)
            twin_opt.zero_grad()
            F.cross_entropy(twin(torch.cat(xs)), torch.cat(ys)).backward()  # FSDP averages over ranks: the same
            for name in ("conv1", "conv2", "fc"):
                m = getattr(twin, name)
                ref[f"grad/{name}/{step}"] = float(torch.cat([p.grad.reshape(-1) for p in m.parameters()]).norm())
            twin_opt.step()
            for name in ("conv1", "conv2", "fc"):
                m = getattr(twin, name)
                ref[f"weight/{name}/{step}"] = float(torch.cat([p.detach().reshape(-1) for p in m.parameters()]).norm())
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.step(loss=loss)
    return ref


def cpu_mesh():
    """The 2 gloo ranks' mesh on the CPU (fully_shard's default mesh is on the GPU where one is present)."""
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh("cpu", (dist.get_world_size(),))


def ddp_no_sync(rank, out):
    torch.manual_seed(0)
    model = TinyCNN()
    model.bn1.eval()  # (the plain copy must compute what DDP's model does: no buffer broadcast between them)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    ref = {}
    with tview.Recorder(ddp, out, every=1, optimizer=opt) as rec:
        for step in range(STEPS):
            plain = TinyCNN()
            plain.load_state_dict(model.state_dict())
            plain.bn1.eval()
            opt.zero_grad()
            for micro in range(2):
                x, y = batch(rank, 10 * step + micro)
                F.cross_entropy(plain(x), y).backward()  # this rank's accumulated gradient
                with ddp.no_sync() if micro == 0 else contextlib.nullcontext():
                    loss = F.cross_entropy(ddp(x), y)
                    loss.backward()
            ref[f"local/{step}"] = layer_grad_norm(plain.conv2)
            ref[f"grad/{step}"] = layer_grad_norm(model.conv2)
            opt.step()
            rec.step(loss=loss)
    return ref


def fsdp2_bf16(rank, out):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 64, 10))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for m in (model[0], model[2], model[5]):
        fully_shard(m, mp_policy=policy, mesh=cpu_mesh())
    fully_shard(model, mp_policy=policy, mesh=cpu_mesh())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref = {}
    with tview.Recorder(model, out, every=1, optimizer=opt) as rec:
        for step in range(STEPS):
            x, y = batch(rank, step)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            ref[f"grad/{step}"] = float(torch.cat([p.grad.full_tensor().reshape(-1) for p in model[2].parameters()])
                                        .double().norm())
            opt.step()
            ref[f"weight/{step}"] = float(torch.cat([p.full_tensor().reshape(-1) for p in model[2].parameters()])
                                          .double().norm())
            rec.step(loss=loss)
    return ref


def layer_grad_norm(module) -> float:
    return float(torch.cat([p.grad.reshape(-1) for p in module.parameters()]).double().norm())


def rank_main(rank, world, case, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cases = {"ddp_frozen": ddp_frozen, "ddp_no_sync": ddp_no_sync, "fsdp2": fsdp2, "fsdp2_bf16": fsdp2_bf16,
             **{f"ddp_frozen_{v}": functools.partial(ddp_frozen, variant=v)
                for v in ("no_powsum", "hook_fails", "param_hook_fails")}}
    ref = cases[case](rank, out)
    np.savez(os.path.join(out, f"reference-{rank}.npz"), **ref)
    dist.destroy_process_group()


if __name__ == "__main__":
    case, out = sys.argv[1], sys.argv[2]
    mp.spawn(rank_main, args=(2, case, out, free_port()), nprocs=2)
