"""Which modules of a model are recorded layers, what their output channels are, and the wrappers around a
user's model (DDP, DataParallel, torch.compile, FSDP) that tview looks through or refuses."""

from __future__ import annotations

import functools
import weakref

import torch
from torch import nn
from torch.nn.utils import parametrize

from tview.errors import ConfigError

PARAM_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm,
                     nn.LayerNorm)
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                    nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus)


def _fsdp1_type():
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
        return FullyShardedDataParallel
    except ImportError:  # a torch built without distributed
        return None


@functools.lru_cache(maxsize=None)
def _compiled_type():
    try:
        from torch._dynamo.eval_frame import OptimizedModule
        return OptimizedModule
    except ImportError:
        return None


def refuse_unsupported(model: nn.Module) -> None:
    """Refused up front: TorchScript (a scripted or traced model: its compiled forward runs no hook added after it
    was made) and FSDP1 (FullyShardedDataParallel: its flat parameters hold no layer's own tensor)."""
    scripted = [name or "the model" for name in _outermost_scripted(model)]
    if scripted:
        raise ConfigError(f"tview does not record TorchScript modules ({', '.join(scripted[:3])} made by "
                          "torch.jit.script or torch.jit.trace): scripted code runs no forward hook added after it "
                          "was made. Give the Recorder the eager model (script or trace it after training), or "
                          "torch.compile it, which tview records")
    fsdp1 = _fsdp1_type()
    if fsdp1 is not None and any(isinstance(m, fsdp1) for m in model.modules()):
        raise ConfigError("tview does not record FullyShardedDataParallel (FSDP1) models: its flat parameters "
                          "are not the layers' own tensors. Use FSDP2 (torch.distributed.fsdp.fully_shard), "
                          "which tview records (per-layer statistics combined across ranks), or DDP")


def _outermost_scripted(model: nn.Module) -> list[str]:
    """The names of the TorchScript modules in the model ('': the model itself) that are not inside another one."""
    names = [name for name, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    inside = set(names)
    return [name for name in names if not name or name.rpartition(".")[0] not in inside]


def wrapper_chain(model: nn.Module) -> list[nn.Module]:
    """The model and each model inside it through DistributedDataParallel / DataParallel / torch.compile
    wrappers (any order, any depth), outermost first: the last is the user's own model."""
    compiled = _compiled_type()
    chain = [model]
    while True:
        m = chain[-1]
        if isinstance(m, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            chain.append(m.module)
        elif compiled is not None and isinstance(m, compiled):
            chain.append(m._orig_mod)
        else:
            return chain


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside its wrappers."""
    return wrapper_chain(model)[-1]


def find_wrapper(model: nn.Module, kind: type) -> nn.Module | None:
    """The outermost wrapper of this kind around the user's model, or None."""
    return next((m for m in wrapper_chain(model) if isinstance(m, kind)), None)


def is_compiled(model: nn.Module) -> bool:
    compiled = _compiled_type()
    return compiled is not None and find_wrapper(model, compiled) is not None


def runs_compiled(outer: nn.Module, model: nn.Module) -> bool:
    """The Recorder's model runs compiled code: a torch.compile wrapper around it, or compiled in place
    (model.compile())."""
    return is_compiled(outer) or compiled_in_place(model)


def compiled_in_place(model: nn.Module) -> bool:
    """model.compile() was called on the model itself (it can happen at any time, unlike a wrapper)."""
    return getattr(model, "_compiled_call_impl", None) is not None


def own_params(m: nn.Module) -> list[nn.Parameter]:
    """A layer's own parameters: those it holds, then those of its parametrizations (torch.nn.utils.parametrize:
    weight_norm's original0 and original1, spectral_norm's original), which train in place of its weight."""
    params = [p for p in m._parameters.values() if p is not None]  # as parameters(recurse=False), read each step
    plists = m._modules.get("parametrizations")
    if plists is not None and parametrize.is_parametrized(m):
        params += [p for plist in plists.values() for p in plist.parameters(recurse=False)]
    return params


def sparse_grads(m: nn.Module) -> bool:
    """An embedding with sparse gradients (sparse=True): tview's gradient and weight statistics read dense tensors."""
    return isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and bool(m.sparse)


def _own_params(m: nn.Module) -> bool:
    return bool(own_params(m))


def _parametrizations(model: nn.Module) -> set[int]:
    """The modules that compute parametrized tensors (a layer's `parametrizations` and what it holds): part of
    their layer, not layers (their output is the layer's weight, not an activation)."""
    return {id(x) for m in model.modules() if parametrize.is_parametrized(m) for x in m.parametrizations.modules()}


def recorded_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv, Linear, norm and activation module, and of any other module with
    parameters of its own (a user's own conv, say), in model order."""
    inner = _parametrizations(model)
    return [(name, m) for name, m in model.named_modules()
            if name and id(m) not in inner and (isinstance(m, PARAM_LAYER_TYPES + ACTIVATION_TYPES) or _own_params(m))]


class ModuleWatch:
    """Notices modules that join the model after its layers were found (a head attached, a module appended or
    swapped in, parameters given to a module that had none): none of them is recorded. Cheap on each check: global
    module and parameter registration hooks flag a change to a module of the model (no walk of the model), and the
    lengths of its Sequential/ModuleList/ModuleDict containers catch insert(), which bypasses them; only then is
    the model walked for the modules that would be layers and are not."""

    def __init__(self, model: nn.Module, layers: list[tuple[str, nn.Module]]):
        from torch.nn.modules.module import (
            register_module_module_registration_hook,
            register_module_parameter_registration_hook,
        )
        self.model = model
        # the recorded layers and their names when the Recorder was made (held: their ids stay theirs)
        self.layers = {id(m): (name, m) for name, m in layers}
        self.changed = False
        self._look()
        ref = weakref.ref(self)  # the global hooks outlive a Recorder never closed: they do not keep it
        self.handles = [register_module_module_registration_hook(functools.partial(_registered, ref, False)),
                        register_module_parameter_registration_hook(functools.partial(_registered, ref, True))]

    def _look(self):
        """The model's modules, its containers and their lengths as they are now."""
        self.tree = {id(m): m for m in self.model.modules()}
        self.containers = [m for m in self.tree.values() if isinstance(m, CONTAINER_TYPES)]
        self.lengths = self._lengths()

    def _lengths(self) -> list[int]:
        return [len(c._modules) for c in self.containers]

    def unrecorded(self) -> list[str]:
        """Names of the modules that would be recorded layers and are not (joined the model since); [] at once
        where nothing was registered into the model and no container changed length."""
        return self.changes()[0]

    def changes(self) -> tuple[list[str], list[tuple[str, str]], list[str]]:
        """(modules that would be recorded layers and are not, (name recorded, name now) of recorded layers whose
        name changed (a module inserted or deleted before them in a Sequential), recorded layers no longer in the
        model); all empty at once where nothing was registered into the model and no container changed length."""
        if not self.changed and self._lengths() == self.lengths:
            return [], [], []
        self.changed = False
        self._look()
        now = {id(m): n for n, m in self.model.named_modules()}
        new = [n for n, m in recorded_layers(self.model) if id(m) not in self.layers]
        renamed = [(old, now[k]) for k, (old, _) in self.layers.items() if k in now and now[k] != old]
        gone = [old for k, (old, _) in self.layers.items() if k not in now]
        return new, renamed, gone

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


CONTAINER_TYPES = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _registered(ref, is_param: bool, parent: nn.Module, name: str, value) -> None:
    """A module or parameter registered anywhere (a global hook): flags the watch where it joins one of the model's
    modules (a parameter: one that is not a recorded layer; a layer's replaced parameter is followed anyway)."""
    watch = ref()
    if watch is not None and id(parent) in watch.tree and not (is_param and id(parent) in watch.layers):
        watch.changed = True


def channel_dim(m: nn.Module) -> int | None:
    """The weight dimension that holds the output channels (0 for Conv and Linear, 1 for ConvTranspose of
    one group), or None where tview does not measure per-channel gradient norms."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return 1 if m.groups == 1 else None
    if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
        return 0
    return None


def out_channels(m: nn.Module) -> int | None:
    return (getattr(m, "out_channels", None) or getattr(m, "out_features", None)
            or getattr(m, "num_features", None) or getattr(m, "num_channels", None))


def layer_info(name: str, m: nn.Module) -> dict:
    kind = "activation" if isinstance(m, ACTIVATION_TYPES) else "param"
    return {"name": name, "type": type(m).__name__, "kind": kind, "channels": out_channels(m),
            "params": int(sum(p.numel() for p in own_params(m)))}


def filter_weight(m: nn.Module, w=None):
    """A conv layer's filters as [out channels, in channels, k...] (ConvTranspose stores them the other way);
    `w`: a tensor of the weight's shape to read them from (default: the weight)."""
    w = m.weight if w is None else w
    return w.transpose(0, 1) if isinstance(m, nn.modules.conv._ConvTransposeNd) else w


def is_filter_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and (
        not isinstance(m, nn.modules.conv._ConvTransposeNd) or m.groups == 1)


class Hook:
    """A hook of tview's on the user's model (or its parameters). Copied with the model (copy.deepcopy: an EMA
    model, the best model kept) or pickled with it (torch.save(model)), it becomes a hook that does nothing: the
    copy is not the recorded model (and a Recorder, with its threads and files, cannot be copied)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        return detached_hook()

    def __reduce__(self):
        return (detached_hook, ())


def _nothing(*args, **kwargs):
    return None


def detached_hook() -> Hook:
    """What a copy of the model holds in place of tview's hook."""
    return Hook(_nothing)
