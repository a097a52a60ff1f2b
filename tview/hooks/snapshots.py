"""Snapshots a recorded step may keep: conv filters, and the feature maps of a fixed probe batch."""

from __future__ import annotations

import torch
from torch import nn

from tview.errors import ConfigError
from tview.hooks.layers import filter_weight


def is_sharded(t: torch.Tensor) -> bool:
    """A DTensor (FSDP2's parameters): this rank holds a shard, not the layer's whole tensor."""
    return type(t).__name__ == "DTensor" or hasattr(t, "to_local")


class ProbeBatch:
    """A fixed batch forwarded in eval mode (no side effects) at snapshot steps; its outputs at the chosen
    layers are the feature maps a run keeps."""

    def __init__(self, model: nn.Module, layers: list[tuple[str, nn.Module]], probe_batch, probe_layers: list[str]):
        x, y = (probe_batch if isinstance(probe_batch, (tuple, list)) else (probe_batch, None))
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"probe_batch must be a tensor or (inputs, targets), got {type(x).__name__}")
        names = [n for n, _ in layers]
        unknown = [n for n in probe_layers if n not in names]
        if unknown:
            raise ConfigError(f"probe_layers {unknown} are not recorded layers; choose from {names}")
        self.model, self.layers = model, layers
        device = next(model.parameters()).device
        self.inputs = x.detach().to(device)
        self.targets = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else None
        self.layer_names = list(probe_layers)
        try:
            fmaps = self.run()
        except Exception as exc:
            raise ConfigError(f"probe_batch of shape {tuple(x.shape)} fails in the model's forward: {exc}") from exc
        self.shapes = {n: tuple(t.shape) for n, t in fmaps.items()}
        # the host copy is made now, before training: never a device read during a step
        self.host_copy = (self.inputs.float() if self.inputs.is_floating_point() else self.inputs).cpu().numpy()

    def run(self) -> dict[str, torch.Tensor]:
        """Forward the probe batch in eval mode and capture the chosen layers' outputs."""
        modes = [(m, m.training) for m in self.model.modules()]
        captured: dict[str, torch.Tensor] = {}

        def capture(name):
            def hook(module, inputs, output):
                if isinstance(output, torch.Tensor):
                    captured[name] = output.detach()
            return hook

        handles = [m.register_forward_hook(capture(n)) for n, m in self.layers if n in self.layer_names]
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(self.inputs)
            return captured
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.training = training

    def host_inputs(self):
        return self.host_copy


def kept_filters(filter_layers: list[tuple[str, nn.Module]], ctx, gathered_now: bool) -> tuple | None:
    """(the weight copy, {'filters/<layer>': its view of the layer's filters}) where the copy the update ratio
    keeps holds this step's weights (`gathered_now`: the parameter probes put them there at this step, and
    nothing has used it as scratch since): the snapshot is then read from it, and no copy of the filters is
    made. None where it does not (another preset, sharded parameters): the snapshot copies the filters."""
    if ctx is None or not gathered_now or ctx.copy_state != "weights" or "copy" not in ctx.__dict__:
        return None
    index = {id(p): k for k, p in enumerate(ctx.params)}
    views = {}
    for name, m in filter_layers:
        k = index.get(id(m.weight))
        if is_sharded(m.weight) or k is None:
            return None
        views[f"filters/{name}"] = filter_weight(m, ctx.copy_views[k])
    return ctx.copy, views


def snapshot(filter_layers: list[tuple[str, nn.Module]], probe: ProbeBatch | None, with_filters: bool = True) -> dict:
    """Conv filters ([out, in, k...], whole tensors only; `with_filters` False: none, they come from the
    weight copy, see kept_filters) and the probe batch's feature maps, keyed 'filters/<layer>',
    'feature_maps/<layer>'."""
    out = {f"filters/{name}": filter_weight(m) for name, m in filter_layers
           if with_filters and not is_sharded(m.weight)}
    if probe is not None:
        out.update({f"feature_maps/{name}": t for name, t in probe.run().items()})
    return out
