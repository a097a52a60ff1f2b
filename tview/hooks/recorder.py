"""The Recorder: a training-loop callback that records statistics of a model into a run store.

It keeps scheduling (which steps, which probes), the one batched host transfer per step and the
queue to the background writer; what is measured is the probes' business (tview/hooks/*_probes.py).
"""

from __future__ import annotations

import atexit
import math
import os
import time
import warnings
import weakref

import numpy as np
import torch
from torch import nn

from tview.errors import ConfigError, StoreWriteError, TviewError
from tview.hooks import activation_probes as A
from tview.hooks import param_probes as PP
from tview.hooks.params import ParamContext, ParamStep, channel_dim
from tview.hooks.probes import EVERY, registered_probes
from tview.hooks.rows import RowBuilder
from tview.hooks.schedules import Preset, as_schedule, get_preset
from tview.store import schema
from tview.store.background import BackgroundWriter
from tview.store.manifest import write_manifest
from tview.store.records import ShardLayout, StepRecord
from tview.store.shard import refuse_existing_shard

PARAM_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm,
                     nn.LayerNorm)
CHANNEL_PARAM_TYPES = (nn.modules.conv._ConvNd, nn.Linear)  # per output channel gradient norms
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                    nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus)
MODES = ("new", "resume", "overwrite")
BUILTIN_SCALARS = 7  # step_time, busy_time, examples, examples_per_sec, host_rss_bytes, two CUDA memory figures


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a DistributedDataParallel / DataParallel wrapper."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def recorded_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv, Linear, norm and activation module, in model order."""
    return [(name, m) for name, m in model.named_modules()
            if name and isinstance(m, PARAM_LAYER_TYPES + ACTIVATION_TYPES)]


def _layer_info(name: str, m: nn.Module) -> dict:
    kind = "activation" if isinstance(m, ACTIVATION_TYPES) else "param"
    channels = (getattr(m, "out_channels", None) or getattr(m, "out_features", None)
                or getattr(m, "num_features", None) or getattr(m, "num_channels", None))
    return {"name": name, "type": type(m).__name__, "kind": kind, "channels": channels,
            "params": int(sum(p.numel() for p in m.parameters(recurse=False)))}


def preset_probes(preset: Preset, layer_names: list[str], distributed: bool, trajectory_dims: int,
                  seed: int) -> tuple[list[PP.ParamProbe], list[A.ActivationProbe]]:
    """The registered probes a preset runs, each with its cadence (every recorded step, or detail steps)."""
    setting = {"layer_names": layer_names, "distributed": distributed, "trajectory_dims": trajectory_dims,
               "seed": seed}
    probes = [p for p in (cls.create(preset, setting) for cls in registered_probes()) if p is not None]
    return ([p for p in probes if isinstance(p, PP.ParamProbe)],
            [p for p in probes if isinstance(p, A.ActivationProbe)])


_STATM = {"fd": None, "pid": None}


def _host_rss_bytes() -> float:
    """Resident memory of this process (Linux: /proc/self/statm, kept open; elsewhere: the peak)."""
    try:
        if _STATM["pid"] != os.getpid():  # opened by this process (a forked child reopens its own)
            _STATM["fd"] = os.open("/proc/self/statm", os.O_RDONLY)
            _STATM["page"], _STATM["pid"] = os.sysconf("SC_PAGE_SIZE"), os.getpid()
        return float(os.pread(_STATM["fd"], 128, 0).split()[1]) * _STATM["page"]
    except (OSError, ValueError, IndexError):
        import resource
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _to_host(tensors: list[torch.Tensor], native: list[bool] | None = None) -> list[np.ndarray]:
    """Every tensor to a numpy copy: float64 (statistics finished in float64 on the host), or in its
    own dtype where `native` says so (snapshots: a float32 filter needs no float64 round trip). One
    device-to-host transfer for a GPU."""
    if not tensors:
        return []
    native = native or [False] * len(tensors)
    if all(t.device.type == "cpu" for t in tensors):  # no transfer to batch: skip the concatenation
        return [np.array(t.detach().numpy(), dtype=None if own else np.float64) for t, own in zip(tensors, native)]
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    host = flat.cpu().numpy()
    out, offset = [], 0
    for t, own in zip(tensors, native):
        n = t.numel()
        part = host[offset:offset + n].reshape(tuple(t.shape))
        out.append(part.astype(torch.empty(0, dtype=t.dtype).numpy().dtype) if own else part)
        offset += n
    return out


def to_host_in_place(dicts: list[dict], native: tuple[dict, ...] = ()) -> None:
    """Replace every tensor value of these dicts (and of the `native` ones, kept in their own dtype)
    by a numpy copy, in one host transfer."""
    slots = [(d, k, own) for ds, own in ((dicts, False), (native, True)) for d in ds
             for k, v in d.items() if isinstance(v, torch.Tensor)]
    hosts = _to_host([d[k] for d, k, _ in slots], [own for *_, own in slots])
    for (d, k, _), host in zip(slots, hosts):
        d[k] = host


def _check_settings(mode, queue_size, flush_seconds, trajectory_dims):
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise ConfigError(f"queue_size must be a positive integer, got {queue_size!r}")
    if (isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float))
            or not 0 < flush_seconds <= 3600 or not math.isfinite(flush_seconds)):
        raise ConfigError(f"flush_seconds must be a positive number of seconds up to 3600, got {flush_seconds!r}")
    if isinstance(trajectory_dims, bool) or not isinstance(trajectory_dims, int) or not 1 <= trajectory_dims <= 64:
        raise ConfigError(f"trajectory_dims must be an integer from 1 to 64, got {trajectory_dims!r}")


def _scalar_value(name: str, value):
    """A scalar as a float, or a one-element tensor left on its device; anything else is refused."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ConfigError(f"step(): scalar {name!r} is a tensor of {value.numel()} {value.dtype} values; "
                              f"pass one real number (e.g. {name}.mean())")
        return value.detach().reshape(1)
    if isinstance(value, complex) or np.iscomplexobj(value):
        raise ConfigError(f"step(): scalar {name!r}={value!r} is complex; pass a real number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"step(): scalar {name}={value!r} is not a number") from None


class Recorder:
    """Records a model's training into `run_dir` (one HDF5 shard per rank).

    Call `step(loss=...)` once per optimizer step, after `optimizer.step()`, and `close()` at the
    end (or use it as a context manager). Steps count from 0; `every` (an int, a list of steps or
    a callable step -> bool) says which steps are recorded; `snapshot_every` which steps also keep
    the conv filters and the feature maps of `probe_batch` (default: the preset's detail steps). The
    background writer gathers records for `flush_seconds` and writes them together: readers, and what
    survives a crash, lag by that
    much (`flush()` writes at once).
    """

    def __init__(self, model: nn.Module, run_dir: str, every=10, *, preset="default", snapshot_every=None,
                 probe_batch=None, probe_layers=None, optimizer=None, mode: str = "new",
                 queue_size: int = 64, flush_seconds: float = 1.0, trajectory_dims: int = 3, seed: int = 0,
                 start_step: int | None = None, rank: int | None = None, world_size: int | None = None,
                 config: dict | None = None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_settings(mode, queue_size, flush_seconds, trajectory_dims)
        self.model = unwrap(model)
        self.run_dir = os.fspath(run_dir)
        self.schedule = as_schedule(every, "every")
        # default: the preset's detail steps, beside the activation statistics of the same step
        self.snapshot_schedule = as_schedule(snapshot_every, "snapshot_every") if snapshot_every is not None else None
        self.preset = get_preset(preset)
        self.optimizer = optimizer
        self.trajectory_dims = trajectory_dims
        dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist_on else 0)
        self.world_size = (world_size if world_size is not None
                           else (torch.distributed.get_world_size() if dist_on else 1))
        self._find_layers()
        self.shard_path = os.path.join(self.run_dir, schema.shard_name(self.rank))
        self._prepare_folder(mode)
        self._step = self._first_step(mode, start_step)
        self._set_up_probes(seed)
        self._set_up_hooks(probe_batch, probe_layers)
        self.config = dict(config or {})
        self._scalar_names: set[str] = set()
        if self.rank == 0:
            try:
                write_manifest(self.run_dir, self._manifest())
            except OSError as exc:
                raise StoreWriteError(f"tview could not write {self.run_dir}/{schema.MANIFEST_NAME}: {exc}") from None
        self._writer = BackgroundWriter(self.shard_path, self._finalize, resume=(mode == "resume"),
                                        queue_size=queue_size, batch_seconds=float(flush_seconds))
        self._layout: ShardLayout | None = None
        self._recorded = 0
        self._closed = False
        self._failed_at: int | None = None
        self._t_prev = time.perf_counter()
        self._schedule()
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- setup ----------------------------------------------------------------------------
    def _find_layers(self):
        self.layers = recorded_layers(self.model)
        if not self.layers:
            raise ConfigError(f"{type(self.model).__name__} has no Conv, Linear, norm or activation module to record")
        self.layer_names = [n for n, _ in self.layers]
        self.layer_info = [_layer_info(n, m) for n, m in self.layers]
        self.param_layer_ids = [i for i, (_, m) in enumerate(self.layers)
                                if any(True for _ in m.parameters(recurse=False))]
        self.filter_layers = [n for n, m in self.layers if isinstance(m, nn.modules.conv._ConvNd)]

    def _set_up_probes(self, seed: int):
        ids = self.param_layer_ids
        self.pctx = None
        if ids:
            modules = [self.layers[i][1] for i in ids]
            self.pctx = ParamContext([list(m.parameters(recurse=False)) for m in modules],
                                     [channel_dim(m) for m in modules], [getattr(m, "groups", 1) for m in modules])
        self.param_probes, self.act_probes = preset_probes(
            self.preset, [self.layer_names[i] for i in ids], self.world_size > 1, self.trajectory_dims, seed)
        if self.pctx is None:
            self.param_probes = []
        for probe in self.param_probes:
            probe.setup(self.pctx)
        self.rows = RowBuilder(self.layer_names, ids, self.pctx)

    def _set_up_hooks(self, probe_batch, probe_layers):
        self.probe_inputs = self.probe_targets = None
        self.probe_layers: list[str] = []
        self._fmap_shapes: dict[str, tuple] = {}
        self._channels: dict[int, int] = {}  # activation widths seen in the forward pass
        self._recording = self._detail_now = False  # set for real once the writer exists
        self._act_due: list[A.ActivationProbe] = []
        self._examples = 0
        self._pending_act: list[tuple[int, A.ActivationProbe, dict]] = []
        self._hooks = [self.model.register_forward_pre_hook(self._count_examples)]
        self._act_hooks = []  # attached only for steps that compute activation statistics
        if probe_batch is not None:
            self._setup_probe(probe_batch, probe_layers if probe_layers is not None else self.filter_layers)
        elif probe_layers:
            raise ConfigError("probe_layers given without probe_batch: pass the batch whose feature maps to keep")
        self._local: dict[int, torch.Tensor] = {}
        self._t_last_grad: float | None = None
        if self.pctx is not None and any(isinstance(p, PP.LocalGradNorm) for p in self.param_probes):
            for k, p in enumerate(self.pctx.params):
                self._hooks.append(p.register_hook(self._make_grad_hook(k)))

    def _prepare_folder(self, mode: str):
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise ConfigError(f"{self.run_dir}: exists and is not a folder")
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.run_dir}: cannot make the run folder: {exc}") from None
        if not os.access(self.run_dir, os.W_OK):
            raise ConfigError(f"{self.run_dir}: folder is not writable")
        if mode == "new":
            refuse_existing_shard(self.shard_path, "pass mode='resume' to continue it or mode='overwrite' to "
                                                   "replace it, or choose a new folder")
        elif mode == "overwrite" and os.path.lexists(self.shard_path):
            os.remove(self.shard_path)

    def _first_step(self, mode: str, start_step: int | None) -> int:
        if start_step is not None:
            if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
                raise ConfigError(f"start_step must be a non-negative integer, got {start_step!r}")
            return start_step
        if mode == "resume" and os.path.exists(self.shard_path):
            from tview.store.reader import ShardReader
            shard = ShardReader(self.shard_path)
            try:
                steps = shard.steps(schema.TABLE_SCALARS)
                return int(steps[-1]) + 1 if len(steps) else 0
            finally:
                shard.close()
        return 0

    def _manifest(self) -> dict:
        return {"run_id": os.path.basename(os.path.abspath(self.run_dir)), "created_unix": time.time(),
                "world_size": self.world_size, "layers": self.layer_info, "model": type(self.model).__name__,
                "preset": self.preset.name, "schedule": repr(self.schedule),
                "snapshot_schedule": repr(self.snapshot_schedule) if self.snapshot_schedule else "detail steps",
                "probe_layers": self.probe_layers,
                "filter_layers": self.filter_layers, "trajectory_dims": self.trajectory_dims,
                "probes": [f"{p.table} ({p.cadence})" for p in self.param_probes + self.act_probes],
                "hist": {"lo": schema.HIST_LO, "hi": schema.HIST_HI, "per_decade": schema.HIST_PER_DECADE},
                "torch_version": torch.__version__, "config": self.config}

    def _setup_probe(self, probe_batch, probe_layers):
        x, y = (probe_batch if isinstance(probe_batch, (tuple, list)) else (probe_batch, None))
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"probe_batch must be a tensor or (inputs, targets), got {type(x).__name__}")
        unknown = [n for n in probe_layers if n not in self.layer_names]
        if unknown:
            raise ConfigError(f"probe_layers {unknown} are not recorded layers; choose from {self.layer_names}")
        device = next(self.model.parameters()).device
        self.probe_inputs = x.detach().to(device)
        self.probe_targets = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else None
        self.probe_layers = list(probe_layers)
        try:
            fmaps = self._run_probe()
        except Exception as exc:
            raise ConfigError(f"probe_batch of shape {tuple(x.shape)} fails in the model's forward: {exc}") from exc
        self._fmap_shapes = {n: tuple(t.shape) for n, t in fmaps.items()}

    def _run_probe(self) -> dict[str, torch.Tensor]:
        """Forward the probe batch in eval mode (no side effects) and capture the chosen layers."""
        modes = [(m, m.training) for m in self.model.modules()]
        captured: dict[str, torch.Tensor] = {}

        def capture(index, name):
            def hook(module, inputs, output):
                if isinstance(output, torch.Tensor):
                    captured[name] = output.detach()
                    if output.dim() >= 2:
                        self._channels.setdefault(index, int(output.shape[1]))
            return hook

        handles = [module.register_forward_hook(capture(i, name)) for i, (name, module) in enumerate(self.layers)
                   if name in self.probe_layers]
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(self.probe_inputs)
            return captured
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.training = training

    def _set_activation_hooks(self, on: bool):
        """Attach the forward hooks for a step that computes activation statistics; detach them
        for the others, where every module then takes PyTorch's fast call path, hook-free."""
        if on and not self._act_hooks:
            self._act_hooks = [module.register_forward_hook(self._make_forward_hook(i))
                               for i, (_, module) in enumerate(self.layers)]
        elif not on and self._act_hooks:
            for h in self._act_hooks:
                h.remove()
            self._act_hooks = []

    def _due(self, probe) -> bool:
        return self._recording and (probe.cadence == EVERY or self._detail_now)

    def _schedule(self):
        """Decide what the current step records, and attach the hooks it needs."""
        self._recording = self._failed_at is None and bool(self.schedule(self._step))
        self._detail_now = self._recording and self._recorded % self.preset.detail_every == 0
        self._act_due = [p for p in self.act_probes if self._due(p)]
        self._set_activation_hooks(bool(self._act_due))

    # -- hooks -------------------------------------------------------------------------------
    def _count_examples(self, module, inputs):
        if self._recording and module.training and inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim():
            self._examples += inputs[0].shape[0]

    def _make_forward_hook(self, index: int):
        def hook(module, inputs, output):  # attached only while the step computes activation statistics
            if not module.training or not isinstance(output, torch.Tensor):
                return
            ctx = A.ActivationContext(output, self.preset.act_sample_examples)
            if ctx.channel_dims is not None:
                self._channels.setdefault(index, int(output.shape[1]))
            for probe in self._act_due:
                self._pending_act.append((index, probe, probe.compute(ctx)))
        return hook

    def _make_grad_hook(self, k: int):
        def hook(grad):
            self._t_last_grad = time.perf_counter()
            if self._recording:
                if k in self._local:
                    self._local[k] = self._local[k] + grad.detach()
                else:
                    self._local[k] = grad.detach().clone()
            return None
        return hook

    # -- the per-step call ----------------------------------------------------------------
    def step(self, loss=None, batch_size: int | None = None, **scalars) -> None:
        """Close the current optimizer step. Call once per step, after optimizer.step()."""
        now = time.perf_counter()
        if self._closed:
            raise TviewError(f"Recorder for {self.run_dir} is closed; step() after close()")
        if self._failed_at is None and self._writer.error is not None:
            self._fail()
        if self._failed_at is not None and (self._step - self._failed_at) % 50 == 0:
            warnings.warn(f"tview: recording into {self.shard_path} stopped at step {self._failed_at} "
                          f"({self._writer.error}); training goes on unrecorded", RuntimeWarning, stacklevel=2)
        if self._recording:
            try:
                self._record(now, loss, batch_size, scalars)
            finally:
                self._pending_act = []
                self._local = {}
                self._examples = 0
        self._step += 1
        self._t_prev = now
        self._schedule()

    def _fail(self):
        """The writer failed: stop recording (hooks off) and raise its error once, here."""
        self._failed_at = self._step
        self._recording = False
        self._set_activation_hooks(False)
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._writer.check()

    def _scalars(self, now: float, loss, batch_size, scalars: dict) -> tuple[dict, dict]:
        """(host scalars, one-element tensors still on the device), user values checked."""
        step_time = now - self._t_prev
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, float))):
            raise ConfigError(f"step(): batch_size must be a number of examples, got {batch_size!r}")
        examples = batch_size if batch_size is not None else self._examples
        host = {"step_time": step_time, "examples": float(examples),
                "examples_per_sec": examples / step_time if step_time > 0 else float("nan"),
                "host_rss_bytes": _host_rss_bytes()}
        if self._t_last_grad is not None and self._t_last_grad > self._t_prev:
            # this rank's own work (forward, backward up to its last local gradient), without the wait
            # for the slowest rank's all-reduce that makes every rank's step_time equal under DDP
            host["busy_time"] = self._t_last_grad - self._t_prev
        if self.optimizer is not None:
            for g, group in enumerate(self.optimizer.param_groups):
                host["lr" if g == 0 else f"lr/{g}"] = float(group.get("lr", float("nan")))
        if self.pctx is not None and self.pctx.device.type == "cuda":
            host["cuda_allocated_bytes"] = float(torch.cuda.memory_allocated(self.pctx.device))
            host["cuda_max_allocated_bytes"] = float(torch.cuda.max_memory_allocated(self.pctx.device))
        device = {}
        for name, value in ([("loss", loss)] if loss is not None else []) + list(scalars.items()):
            self._check_scalar_name(name)
            v = _scalar_value(name, value)
            (device if isinstance(v, torch.Tensor) else host)[name] = v
        return host, device

    def _check_scalar_name(self, name: str):
        if name in self._scalar_names:
            return
        if len(name.encode("utf-8")) > schema.SCALAR_NAME_LEN:
            raise ConfigError(f"step(): scalar name {name[:40]!r}... is longer than {schema.SCALAR_NAME_LEN} "
                              f"UTF-8 bytes; choose a shorter name")
        if len(self._scalar_names) + BUILTIN_SCALARS + len(self.optimizer.param_groups if self.optimizer else []) \
                >= schema.MAX_SCALARS:
            raise ConfigError(f"step(): scalar {name!r} would exceed the {schema.MAX_SCALARS} scalars a shard holds "
                              f"(already: {sorted(self._scalar_names)})")
        self._scalar_names.add(name)

    def _record(self, now: float, loss, batch_size, scalars):
        host_scalars, device_scalars = self._scalars(now, loss, batch_size, scalars)
        param_step = self._param_step()
        param = []
        for probe in self.param_probes:
            if self._due(probe):
                parts = probe.compute(param_step)
                if parts is not None:
                    param.append((probe, parts))
        due = self.snapshot_schedule(self._step) if self.snapshot_schedule else self._detail_now
        snapshot = self._snapshot() if due else {}
        to_host_in_place([device_scalars] + [p for _, p in param] + [p for _, _, p in self._pending_act],
                         native=(snapshot,))  # the step's one transfer
        if self._layout is None:
            self._layout = self._make_layout()
        self._writer.put(self._layout, {"step": self._step, "wall_time": time.time(), "scalars": host_scalars,
                                        "device_scalars": device_scalars, "param": param,
                                        "act": self._pending_act, "snapshot": snapshot})
        self._recorded += 1

    def _param_step(self) -> ParamStep | None:
        """What the parameter probes read this step (gathered on first use); None for a model without
        parameters. Local gradients, per parameter, only under DDP."""
        if self.pctx is None:
            return None
        local = [self._local.get(k) for k in range(len(self.pctx.params))] if self._local else None
        return ParamStep(self.pctx, local)

    def _snapshot(self) -> dict:
        """Conv filters and the probe batch's feature maps, keyed 'filters/<layer>', 'feature_maps/<layer>'."""
        out = {f"filters/{name}": module.weight for name, module in self.layers if name in self.filter_layers}
        if self.probe_inputs is not None:
            out.update({f"feature_maps/{name}": t for name, t in self._run_probe().items()})
        return out

    def _channel_widths(self) -> dict[str, dict[str, int]]:
        act = {self.layer_names[i]: c for i, c in self._channels.items()}
        par = {self.layer_names[i]: c for i, c in zip(self.param_layer_ids, self.pctx.channel_widths) if c} \
            if self.pctx else {}
        return {col.name: (act if probe.reads == "activation" else par)
                for probe in self.param_probes + self.act_probes for col in probe.columns
                if col.kind == schema.CHANNEL}

    def _make_layout(self) -> ShardLayout:
        layers = [dict(info, channels=self._channels.get(i, info["channels"] if info["kind"] == "param" else None))
                  for i, info in enumerate(self.layer_info)]
        filter_shapes = {n: tuple(m.weight.shape) for n, m in self.layers if n in self.filter_layers}
        return ShardLayout(rank=self.rank, world_size=self.world_size,
                           run_id=os.path.basename(os.path.abspath(self.run_dir)), layers=layers,
                           tables=[p.spec for p in self.param_probes + self.act_probes],
                           channel_widths=self._channel_widths(), filter_shapes=filter_shapes,
                           feature_map_shapes=self._fmap_shapes,
                           probe_inputs=None if self.probe_inputs is None else self.probe_inputs.cpu().numpy(),
                           probe_targets=self.probe_targets)

    # -- host side: runs on the writer thread ---------------------------------------------
    def _finalize(self, item: dict) -> StepRecord:
        rec = StepRecord(step=item["step"], wall_time=item["wall_time"], scalars=dict(item["scalars"]))
        rec.scalars.update({k: float(v.reshape(-1)[0]) for k, v in item["device_scalars"].items()})
        for probe, parts in item["param"]:
            rec.tables[probe.table] = self.rows.param_row(probe, parts)
        calls: dict[A.ActivationProbe, dict[int, list[dict]]] = {}
        for layer, probe, parts in item["act"]:
            calls.setdefault(probe, {}).setdefault(layer, []).append(parts)
        for probe, per_layer in calls.items():
            row = self.rows.activation_row(probe, per_layer)
            if row is not None:
                rec.tables[probe.table] = row
        snap = item["snapshot"]
        rec.filters = {k.split("/", 1)[1]: v.astype(np.float32) for k, v in snap.items() if k.startswith("filters/")}
        rec.feature_maps = {k.split("/", 1)[1]: v.astype(np.float32) for k, v in snap.items()
                            if k.startswith("feature_maps/")}
        return rec

    # -- end ------------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Recorded steps the background writer could not keep up with (counted, never silent)."""
        return self._writer.dropped

    @property
    def current_step(self) -> int:
        return self._step

    def flush(self) -> None:
        """Wait until every step recorded so far is in the shard and visible to readers (the
        writer otherwise gathers up to a second of steps before it writes)."""
        if not self._closed:
            self._writer.flush()

    def close(self) -> None:
        """Write what is queued, mark the shard closed cleanly, remove the hooks. Idempotent. A write
        failure not yet raised by step() is raised here."""
        if self._closed:
            return
        self._closed = True
        self._set_activation_hooks(False)
        for h in self._hooks:
            h.remove()
        self._hooks = []
        try:
            self._writer.close()
        except StoreWriteError:
            if self._failed_at is None:  # not raised yet: raise it now
                raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Recorder({self.run_dir!r}, rank={self.rank}, step={self._step}, preset={self.preset.name})"


def _close_at_exit(ref):
    rec = ref()
    if rec is not None and not rec._closed:
        try:
            rec.close()
        except TviewError as exc:
            warnings.warn(str(exc), RuntimeWarning, stacklevel=1)
