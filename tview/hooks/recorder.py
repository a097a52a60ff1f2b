"""The Recorder: a training-loop callback that records statistics of a model into a run store."""

from __future__ import annotations

import atexit
import os
import time
import warnings
import weakref

import numpy as np
import torch
from torch import nn

from tview.errors import ConfigError, TviewError
from tview.hooks import probes as P
from tview.hooks.schedules import as_schedule, get_preset
from tview.store import schema
from tview.store.background import BackgroundWriter
from tview.store.manifest import write_manifest
from tview.store.records import ShardLayout, StepRecord
from tview.store.shard import refuse_existing_shard

PARAM_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm,
                     nn.LayerNorm)
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                    nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus)
MODES = ("new", "resume", "overwrite")


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


def _to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Every tensor to a float64 numpy array (copied): one device-to-host transfer for a GPU."""
    if not tensors:
        return []
    if all(t.device.type == "cpu" for t in tensors):  # no transfer to batch: skip the concatenation
        return [np.array(t.detach().numpy(), dtype=np.float64) for t in tensors]
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    host = flat.cpu().numpy()
    out, offset = [], 0
    for t in tensors:
        n = t.numel()
        out.append(host[offset:offset + n].reshape(tuple(t.shape)))
        offset += n
    return out


def _in_order(values: list, host: list[np.ndarray]) -> list:
    """`values` with each None replaced by the next of `host` (the transferred tensors, in order)."""
    it = iter(host)
    return [next(it) if v is None else v for v in values]


class Recorder:
    """Records a model's training into `run_dir` (one HDF5 shard per rank).

    Call `step(loss=...)` once per optimizer step, after `optimizer.step()`, and `close()` at the
    end (or use it as a context manager). Steps count from 0; `every` (an int, a list of steps or
    a callable step -> bool) says which steps are recorded; `snapshot_every` which steps also keep
    the conv filters and the feature maps of `probe_batch`. The background writer gathers records
    for `flush_seconds` and writes them together: readers, and what survives a crash, lag by that
    much (`flush()` writes at once).
    """

    def __init__(self, model: nn.Module, run_dir: str, every=10, *, preset="default", snapshot_every=None,
                 probe_batch=None, probe_layers=None, optimizer=None, mode: str = "new",
                 queue_size: int = 64, flush_seconds: float = 1.0, trajectory_dims: int = 3, seed: int = 0, start_step: int | None = None,
                 rank: int | None = None, world_size: int | None = None, config: dict | None = None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ConfigError(f"queue_size must be a positive integer, got {queue_size!r}")
        if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float)) or not flush_seconds > 0:
            raise ConfigError(f"flush_seconds must be a positive number of seconds, got {flush_seconds!r}")
        self.model = unwrap(model)
        self.run_dir = os.fspath(run_dir)
        self.schedule = as_schedule(every, "every")
        self.snapshot_schedule = as_schedule(snapshot_every if snapshot_every is not None
                                             else (10 * every if isinstance(every, int) else 100), "snapshot_every")
        self.preset = get_preset(preset)
        self.optimizer = optimizer
        dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist_on else 0)
        self.world_size = world_size if world_size is not None else (torch.distributed.get_world_size() if dist_on else 1)

        self.layers = recorded_layers(self.model)
        if not self.layers:
            raise ConfigError(f"{type(self.model).__name__} has no Conv, Linear, norm or activation module to record")
        self.layer_names = [n for n, _ in self.layers]
        self.layer_info = [_layer_info(n, m) for n, m in self.layers]
        self.param_layer_ids = [i for i, (_, m) in enumerate(self.layers) if any(True for _ in m.parameters(recurse=False))]
        self.filter_layers = [n for n, m in self.layers if isinstance(m, nn.modules.conv._ConvNd)]

        # Probes the preset asks for
        # activation probes: those of every recorded step, then those of detail steps only
        self.act_probes: list[P.ActivationProbe] = []
        self.detail_probes: list[P.ActivationProbe] = []
        if self.preset.activations:
            (self.act_probes if self.preset.activations_every_step else self.detail_probes).append(P.ActStats())
            self.detail_probes.append(P.ActZeroFraction())
            if self.preset.channels:
                self.detail_probes.append(P.ActChannelStats())
            if self.preset.histograms:
                self.detail_probes.append(P.ActHistogram(self.preset.act_hist_sample))
        self.all_act_probes = self.act_probes + self.detail_probes

        self.shard_path = os.path.join(self.run_dir, schema.shard_name(self.rank))
        self._prepare_folder(mode)
        self._step = self._first_step(mode, start_step)

        # Probe batch: checked (and shapes learnt) by one forward now
        self.probe_inputs = self.probe_targets = None
        self.probe_layers: list[str] = []
        self._fmap_shapes: dict[str, tuple] = {}
        self._channels: dict[int, int] = {}
        self._recording = self._detail_now = False  # set for real once the writer exists
        self._examples = 0
        self._pending_act: list[tuple[int, int, dict]] = []
        self._hooks = [self.model.register_forward_pre_hook(self._count_examples)]
        self._act_hooks = []  # attached only for steps that compute activation statistics
        if probe_batch is not None:
            self._setup_probe(probe_batch, probe_layers if probe_layers is not None else self.filter_layers)
        elif probe_layers:
            raise ConfigError("probe_layers given without probe_batch: pass the batch whose feature maps to keep")

        params = [list(self.layers[i][1].parameters(recurse=False)) for i in self.param_layer_ids]
        self.pctx = P.ParamContext(params) if self.param_layer_ids else None
        self.grad_stats = P.GradStats()
        self.local_grad_norm = P.LocalGradNorm()
        self.weight_stats = P.WeightStats()
        self.param_probes: list[P.ParamProbe] = [self.grad_stats, self.local_grad_norm, self.weight_stats]
        self.trajectory = (P.Trajectory(self.pctx, [self.layer_names[i] for i in self.param_layer_ids],
                                        trajectory_dims, seed) if self.pctx and self.preset.trajectory else None)
        self.trajectory_dims = trajectory_dims
        self._local: dict[int, torch.Tensor] = {}
        if self.pctx and self.world_size > 1 and self.preset.grads:
            for k, p in enumerate(self.pctx.params):
                self._hooks.append(p.register_hook(self._make_grad_hook(k)))

        self.config = dict(config or {})
        if self.rank == 0:
            write_manifest(self.run_dir, self._manifest())
        self._writer = BackgroundWriter(self.shard_path, self._finalize, resume=(mode == "resume"),
                                        queue_size=queue_size, batch_seconds=float(flush_seconds))
        self._layout: ShardLayout | None = None
        self._recorded = 0
        self._closed = False
        self._failed = False
        self._t_prev = time.perf_counter()
        self._schedule()
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- setup ----------------------------------------------------------------------------
    def _prepare_folder(self, mode: str):
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise ConfigError(f"{self.run_dir}: exists and is not a folder")
        os.makedirs(self.run_dir, exist_ok=True)
        if not os.access(self.run_dir, os.W_OK):
            raise ConfigError(f"{self.run_dir}: folder is not writable")
        if mode == "new":
            refuse_existing_shard(self.shard_path, "pass mode='resume' to continue it or mode='overwrite' to "
                                                   "replace it, or choose a new folder")
        elif mode == "overwrite" and os.path.exists(self.shard_path):
            os.remove(self.shard_path)

    def _first_step(self, mode: str, start_step: int | None) -> int:
        if start_step is not None:
            return int(start_step)
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
                "snapshot_schedule": repr(self.snapshot_schedule), "probe_layers": self.probe_layers,
                "filter_layers": self.filter_layers, "trajectory_dims": self.trajectory_dims,
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

    def _schedule(self):
        """Decide what the current step records, and attach the hooks it needs."""
        self._recording = self.schedule(self._step)
        self._detail_now = self._recording and self._detail_due()
        probes = self.all_act_probes if self._detail_now else self.act_probes
        self._set_activation_hooks(self._recording and bool(probes))

    # -- hooks -------------------------------------------------------------------------------
    def _count_examples(self, module, inputs):
        if self._recording and module.training and inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim():
            self._examples += inputs[0].shape[0]

    def _make_forward_hook(self, index: int):
        def hook(module, inputs, output):  # attached only while the step computes activation statistics
            if not module.training or not isinstance(output, torch.Tensor):
                return
            probes = self.all_act_probes if self._detail_now else self.act_probes
            ctx = P.ActivationContext(output, self.preset.act_sample_examples)
            if ctx.channel_dims is not None:
                self._channels.setdefault(index, int(output.shape[1]))
            for k, probe in enumerate(probes):
                self._pending_act.append((index, k, probe.compute(ctx)))
        return hook

    def _make_grad_hook(self, k: int):
        def hook(grad):
            if self._recording:
                if k in self._local:
                    self._local[k] = self._local[k] + grad.detach()
                else:
                    self._local[k] = grad.detach().clone()
            return None
        return hook

    def _detail_due(self) -> bool:
        return self._recorded % self.preset.detail_every == 0

    # -- the per-step call ----------------------------------------------------------------
    def step(self, loss=None, batch_size: int | None = None, **scalars) -> None:
        """Close the current optimizer step. Call once per step, after optimizer.step()."""
        now = time.perf_counter()
        if self._closed:
            raise TviewError(f"Recorder for {self.run_dir} is closed; step() after close()")
        if self._failed:
            return
        if self._writer.error is not None:
            self._fail()
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
        self._failed = True
        self._recording = False
        self._set_activation_hooks(False)
        for h in self._hooks:
            h.remove()
        self._writer.check()

    def _record(self, now: float, loss, batch_size, scalars):
        step = self._step
        step_time = now - self._t_prev
        examples = batch_size if batch_size is not None else self._examples
        host_scalars = {"step_time": step_time, "examples": float(examples),
                        "examples_per_sec": examples / step_time if step_time > 0 else float("nan"),
                        "host_rss_bytes": _host_rss_bytes()}
        if self.optimizer is not None:
            for g, group in enumerate(self.optimizer.param_groups):
                host_scalars["lr" if g == 0 else f"lr/{g}"] = float(group.get("lr", float("nan")))
        device = self.pctx.device if self.pctx else torch.device("cpu")
        if device.type == "cuda":
            host_scalars["cuda_allocated_bytes"] = float(torch.cuda.memory_allocated(device))
            host_scalars["cuda_max_allocated_bytes"] = float(torch.cuda.max_memory_allocated(device))
        tensor_scalars = {}
        for name, value in ([("loss", loss)] if loss is not None else []) + list(scalars.items()):
            if isinstance(value, torch.Tensor):
                tensor_scalars[name] = value.detach().reshape(-1)[:1] if value.numel() else value.new_full((1,), float("nan"))
            else:
                try:
                    host_scalars[name] = float(value)
                except (TypeError, ValueError):
                    raise ConfigError(f"step(): scalar {name}={value!r} is not a number") from None

        keys, values, tensors = [], [], []  # values: a plain number, or None for the next tensor

        def add(key, t):
            keys.append(key)
            if isinstance(t, torch.Tensor):
                values.append(None)
                tensors.append(t)
            else:  # known without looking at data (a count): nothing to transfer
                values.append(t)

        for name, t in tensor_scalars.items():
            add(("scalar", name), t)
        for layer, probe, parts in self._pending_act:
            for k, t in parts.items():
                add(("act", layer, probe, k), t)
        hist = self._detail_now and self.preset.histograms
        def add_param(probe, parts):
            index = self.param_probes.index(probe)
            for part, t in parts.items():
                add(("param", index, part), t)

        if self.pctx is not None:
            weights = self.pctx.weights()
            if self.preset.grads:
                grads, has_grad = self.pctx.grads()
                add_param(self.grad_stats, self.grad_stats.compute(self.pctx, grads))
                if hist:
                    add(("phist", "grad"), self.pctx.histogram(grads))
                if self._local:
                    local = self.pctx.gather("local", [self._local.get(k) for k in range(len(self.pctx.params))])
                    add_param(self.local_grad_norm, self.local_grad_norm.compute(self.pctx, local))
            else:
                has_grad = [True] * len(self.param_layer_ids)
            if self.preset.weights:
                add_param(self.weight_stats, self.weight_stats.compute(self.pctx, weights))
                if hist:
                    add(("phist", "weight"), self.pctx.histogram(weights))
            if self.trajectory is not None and self._detail_now:
                add(("trajectory",), self.trajectory.compute(self.pctx, weights))
        else:
            has_grad = []
        snapshot = self.snapshot_schedule(step)
        if snapshot:
            for name, module in self.layers:
                if name in self.filter_layers:
                    add(("filters", name), module.weight)
            if self.probe_inputs is not None:
                for name, t in self._run_probe().items():
                    add(("fmap", name), t)

        host = _to_host(tensors)  # the one device-to-host transfer of this step
        if self._layout is None:
            self._layout = self._make_layout()
        self._writer.put(self._layout, {"step": step, "wall_time": time.time(), "scalars": host_scalars,
                                        "entries": list(zip(keys, _in_order(values, host))), "has_grad": has_grad,
                                        "hist": hist, "stats": bool(self.preset.grads or self.preset.weights or self.all_act_probes)})
        self._recorded += 1

    def _make_layout(self) -> ShardLayout:
        layers = []
        for i, info in enumerate(self.layer_info):
            info = dict(info)
            if i in self._channels:
                info["channels"] = self._channels[i]
            elif info["kind"] == "activation":
                info["channels"] = None
            layers.append(info)
        if not self.all_act_probes or not self.preset.channels:
            layers = [dict(layer, channels=None) for layer in layers]
        filter_shapes = {n: tuple(m.weight.shape) for n, m in self.layers if n in self.filter_layers}
        return ShardLayout(rank=self.rank, world_size=self.world_size,
                           run_id=os.path.basename(os.path.abspath(self.run_dir)), layers=layers,
                           trajectory_dims=self.trajectory_dims, filter_shapes=filter_shapes,
                           feature_map_shapes=self._fmap_shapes,
                           probe_inputs=None if self.probe_inputs is None else self.probe_inputs.cpu().numpy(),
                           probe_targets=self.probe_targets)

    # -- host side: runs on the writer thread ---------------------------------------------
    def _finalize(self, item: dict) -> StepRecord:
        L = len(self.layers)
        rec = StepRecord(step=item["step"], wall_time=item["wall_time"], scalars=dict(item["scalars"]))
        # only the statistics this step measured: the store fills the others with NaN (hist: 0)
        stats: dict[str, np.ndarray] = {}
        hist: dict[str, np.ndarray] = {}

        def stat_row(name):
            if name not in stats:
                stats[name] = np.full(L, np.nan, dtype=np.float32)
            return stats[name]

        def hist_rows(kind):
            if kind not in hist:
                hist[kind] = np.zeros((L, schema.HIST_BINS), dtype=np.uint32)
            return hist[kind]

        channel_stats: dict[str, dict[str, np.ndarray]] = {}
        trajectory = None
        act_calls: dict[tuple[int, int], list[dict]] = {}
        param_parts: dict[int, dict[str, np.ndarray]] = {}
        calls_open: dict[tuple[int, int], dict] = {}
        filters, fmaps = {}, {}
        ids = np.asarray(self.param_layer_ids, dtype=np.int64)
        no_grad = ids[~np.asarray(item["has_grad"], dtype=bool)] if len(ids) else ids
        for key, value in item["entries"]:
            kind = key[0]
            if kind == "scalar":
                rec.scalars[key[1]] = float(value[0])
            elif kind == "act":
                _, layer, probe, part = key
                call = calls_open.get((layer, probe))
                if call is None or part in call:  # a new call of this module begins
                    call = {}
                    calls_open[(layer, probe)] = call
                    act_calls.setdefault((layer, probe), []).append(call)
                call[part] = value
            elif kind == "param":
                param_parts.setdefault(key[1], {})[key[2]] = value
            elif kind == "phist":
                hist_rows(key[1])[ids] = value
            elif kind == "trajectory":
                trajectory = np.full((L, self.trajectory_dims), np.nan, dtype=np.float32)
                trajectory[ids] = value
            elif kind == "filters":
                filters[key[1]] = value.astype(np.float32)
            elif kind == "fmap":
                fmaps[key[1]] = value.astype(np.float32)
        for probe_index, parts in param_parts.items():
            probe = self.param_probes[probe_index]
            for name, value in probe.finalize(parts, self.pctx.counts).items():
                row = stat_row(name)
                row[ids] = value
                if probe is not self.weight_stats:  # gradient statistics: none where no gradient
                    row[no_grad] = np.nan
        for (layer, probe_index), calls in act_calls.items():
            probe = self.all_act_probes[probe_index]
            for name, value in probe.finalize(P.merge_partials(probe, calls)).items():
                if name in schema.CHANNEL_STATS:
                    channel_stats.setdefault(name, {})[self.layer_names[layer]] = value.astype(np.float32)
                elif name in schema.HIST_KINDS:
                    hist_rows(name)[layer] = value
                else:
                    stat_row(name)[layer] = value
        if item["stats"]:
            rec.stats, rec.channel_stats = stats, channel_stats
            rec.trajectory = trajectory
        if item["hist"]:
            rec.hist = hist
        rec.filters, rec.feature_maps = filters or None, fmaps or None
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
        """Write what is queued, mark the shard closed cleanly, remove the hooks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._set_activation_hooks(False)
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._writer.close()

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
            warnings.warn(str(exc), RuntimeWarning)
