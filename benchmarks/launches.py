"""Ops (a proxy for GPU kernel launches) and host syncs that tview adds to a training step, counted on any machine.

Runs the device code path on the CPU (TVIEW_FORCE_DEVICE_PATH=1: torch ops, never numpy shortcuts) and counts,
with a TorchDispatchMode on the training thread, the ops of one training step (forward, backward, optimizer)
and what tview adds on an ordinary recorded step and on a detail step, alone and as one rank of a DDP job
(gloo, world size 1: DDP's reducer and its hooks run). A cat whose inputs differ in dtype counts one op per input
(CUDA copies them one by one). The host's share, beside: every dispatch tview adds on an ordinary step, view ops
too ("host calls": each costs 1-3 us of host time on a GPU, where a small net's training is host-bound), and the
tensors passed to them. Usage:
    python benchmarks/launches.py [--models resnet,convbn,3c3d,resnet18,mobilenet,vgg] [--batch 8]
Targets (issue "Modern training stack"): ordinary <= 0.35x, detail <= 1.0x the training step's ops, 0 syncs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ["TVIEW_FORCE_DEVICE_PATH"] = "1"  # before tview is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tview  # noqa: E402
from tview.hooks.opcount import OpCounter  # noqa: E402
from tview.models import ConvBNNet, SmallResNet, ThreeC3D  # noqa: E402


def resnet18_sized():
    """A ResNet-18-sized net for 32x32 images: 4 stages of 2 basic blocks, widths 64-512 (11M parameters)."""
    return ResNet18()


class ResNet18(torch.nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        from tview.models import BasicBlock
        self.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.relu = torch.nn.ReLU(inplace=True)
        blocks, cin = [], 64
        for stage, cout in enumerate((64, 128, 256, 512)):
            for b in range(2):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.stages = torch.nn.Sequential(*blocks)
        self.fc = torch.nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.stages(self.relu(self.bn1(self.conv1(x)))), 1).flatten(1))


class MobileNetish(torch.nn.Module):
    """Depthwise-separable blocks (depthwise conv, BatchNorm, ReLU6(inplace), pointwise conv, BatchNorm, ReLU6): 1.1M
    parameters, 19 BatchNorms whose outputs an in-place activation overwrites (a net tview was not built on)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        widths = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
        widths += [(512, 512, 1)] * 3
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(32),
                                        torch.nn.ReLU6(inplace=True))
        self.blocks = torch.nn.Sequential(*[_separable(*w) for w in widths])
        self.fc = torch.nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def _separable(cin: int, cout: int, stride: int) -> torch.nn.Sequential:
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                         nn.ReLU6(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU6(inplace=True))


class VGGish(torch.nn.Module):
    """VGG-11-like: 8 convs with ReLU and max-pooling, no BatchNorm, a two-layer classifier with dropout (8.2M)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(torch.nn.MaxPool2d(2))
            else:
                layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU()]
                cin = v
        self.features = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(512 * 4, 256), torch.nn.ReLU(),
                                      torch.nn.Linear(256, num_classes))

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


MODELS = {"resnet": SmallResNet, "convbn": ConvBNNet, "3c3d": ThreeC3D, "resnet18": resnet18_sized,
          "mobilenet": MobileNetish, "vgg": VGGish}
DEFAULT_MODELS = "resnet,convbn,3c3d,resnet18"  # the four; mobilenet and vgg: nets tview was not built on


def _step(model, opt, x, y, rec=None) -> OpCounter:
    with OpCounter() as count:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss=loss)
    return count


def count_model(name: str, batch: int, ddp: bool, tmp: str) -> dict:
    """{'train': ops, 'ordinary': added ops, 'detail': added ops, 'syncs': sync-prone ops added, ...}."""
    torch.manual_seed(0)
    model = MODELS[name]()
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    for _ in range(2):
        _step(model, opt, x, y)
    train = min((_step(model, opt, x, y) for _ in range(3)), key=lambda c: c.ops)
    rec = tview.Recorder(model, tempfile.mkdtemp(dir=tmp), every=1, optimizer=opt, flush_seconds=3600,
                         world_size=2 if ddp else 1, rank=0)
    detail = _step(model, opt, x, y, rec)  # recorded step 0 is a detail step
    _step(model, opt, x, y, rec)  # the update ratio needs a previous record
    ordinary = _step(model, opt, x, y, rec)
    rec.close()
    added = lambda c: c.ops - train.ops
    return {"params": sum(p.numel() for p in model.parameters()), "train": train.ops,
            "host_calls": ordinary.calls - train.calls, "train_calls": train.calls,
            "host_tensors": ordinary.tensors - train.tensors,
            "ordinary": added(ordinary), "detail": added(detail), "syncs": ordinary.syncs + detail.syncs,
            "sync_names": dict(ordinary.sync_names + detail.sync_names), "train_syncs": train.syncs,
            "ordinary_names": ordinary.by_name - train.by_name, "detail_names": detail.by_name - train.by_name,
            "ordinary_takes": train.by_name - ordinary.by_name}


def init_single_rank_group(tmp: str) -> None:
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"some of {','.join(MODELS)}")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--verbose", action="store_true", help="list the ops tview adds")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        init_single_rank_group(tmp)
        print(f"{'net':10} {'setup':6} {'params':>9} {'train ops':>9} {'ordinary':>14} {'detail':>14} {'syncs':>5}"
              f"  {'host calls (ordinary)':>22} {'tensors':>7}")
        for name in args.models.split(","):
            for ddp in (False, True):
                r = count_model(name, args.batch, ddp, tmp)
                ro, rd = r["ordinary"] / r["train"], r["detail"] / r["train"]
                ok &= ro <= 0.35 and rd <= 1.0 and r["syncs"] == 0
                print(f"{name:10} {'DDP' if ddp else 'alone':6} {r['params']:>9} {r['train']:>9} "
                      f"{r['ordinary']:>5} ({ro:4.2f}x) {r['detail']:>5} ({rd:4.2f}x) {r['syncs']:>5}"
                      f"  {r['host_calls']:>6} of {r['train_calls']:>4} ({r['host_calls'] / r['train_calls']:4.2f}x)"
                      f" {r['host_tensors']:>7}"
                      + (f"  sync-prone: {r['sync_names']}" if r["syncs"] else ""))
                if args.verbose:
                    print("   ordinary adds:", dict(r["ordinary_names"].most_common(12)))
                    if r["ordinary_takes"]:  # DDP with tview's comm hook: the reducer copies where it multiplied
                        print("   ordinary takes away:", dict(r["ordinary_takes"].most_common(12)))
                    print("   detail adds:  ", dict(r["detail_names"].most_common(12)))
        torch.distributed.destroy_process_group()
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
