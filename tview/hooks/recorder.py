"""The Recorder: a training-loop callback that records statistics of a model into a run store.

It keeps scheduling (which steps, which probes), the one batched host transfer per step and the queue to the
background writer; what is measured is the probes' business (tview/hooks/*_probes.py), which modules are layers
is tview/hooks/layers.py's, and the step's timeline tview/hooks/timing.py's.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import math
import os
import threading
import time
import warnings
import weakref

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy

from tview.errors import ConfigError, StoreWriteError, TviewError
from tview.hooks import activation_probes as act
from tview.hooks import param_probes as par
from tview.hooks.activation_batch import ActivationBatch, RowIndex, flat_sample
from tview.hooks.budget import CostBudget, check_budget
from tview.hooks.forward_hooks import ForwardHooks, compile_in_play, compiled_anything, guard_hooks, unguard_hooks
from tview.hooks.host_batch import HostBatch
from tview.hooks.layers import (
    Hook,
    ModuleWatch,
    channel_dim,
    find_wrapper,
    is_compiled,
    is_filter_layer,
    layer_info,
    own_params,
    recorded_layers,
    refuse_unsupported,
    runs_compiled,
    sparse_grads,
    unwrap,
    wrapper_chain,
)
from tview.hooks.origin import load_origin, origin_path, save_origin, weights_set_to
from tview.hooks.params import ParamContext, ParamStep
from tview.hooks.probes import EVERY, host_shortcuts, registered_probes
from tview.hooks.rows import RowBuilder
from tview.hooks.scalars import ScalarNames, host_rss_bytes, scalar_value
from tview.hooks.schedules import Preset, as_schedule, get_preset
from tview.hooks.snapshots import ProbeBatch, is_sharded, kept_filters, snapshot
from tview.hooks.timing import (
    LocalGrads,
    StepClock,
    as_optimizers,
    check_scaler,
    ddp_reduced,
    live_scale,
    lr_names,
    lr_names_of,
    squared_norms,
    squares_in_order,
    unreduced_grads,
)
from tview.hooks.transfer import HostTransfer, Lease, PerBlock
from tview.store import schema
from tview.store.background import BackgroundWriter
from tview.store.manifest import write_manifest
from tview.store.records import ShardLayout, StepRecord
from tview.store.shard import refuse_existing_shard

MODES = ("new", "resume", "overwrite")
OFF, SENTINELS, DETAIL_STEP = 0, 1, 2  # what the activation hooks compute on the current step


def preset_probes(preset: Preset, layer_names: list[str], distributed: bool, trajectory_dims: int,
                  seed: int) -> tuple[list[par.ParamProbe], list[act.ActivationProbe]]:
    """The registered probes a preset runs, each with its cadence (every recorded step, or detail steps)."""
    setting = {"layer_names": layer_names, "distributed": distributed, "trajectory_dims": trajectory_dims,
               "seed": seed}
    probes = [p for p in (cls.create(preset, setting) for cls in registered_probes()) if p is not None]
    return ([p for p in probes if isinstance(p, par.ParamProbe)],
            [p for p in probes if isinstance(p, act.ActivationProbe)])


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


class Recorder:
    """Records a model's training into `run_dir` (one HDF5 shard per rank).

    Call `step(loss=...)` once per optimizer step, after `optimizer.step()`, and `close()` at the end (or use
    it as a context manager). Steps count from 0; `every` (an int, a list of steps or a callable step -> bool)
    says which steps are recorded; `snapshot_every` which steps also keep the conv filters and the feature maps
    of `probe_batch` (default: the preset's detail steps). `optimizer`: one or a list (their learning rates,
    and the step's timeline). The model may be wrapped in DDP, torch.compile or FSDP2 (fully_shard); FSDP1 is
    refused. The background writer gathers records for `flush_seconds` and writes them together: readers, and
    what survives a crash, lag by that much (`flush()` writes at once). `budget` (a share of training time, 0.05:
    5%): where recording as scheduled would cost more, only every k-th scheduled step is recorded (k a power of
    two, from what tview measured it cost; recorded as the scalar `tview_stride`).
    """

    def __init__(self, model: nn.Module, run_dir: str, every=10, *, preset="default", snapshot_every=None,
                 probe_batch=None, probe_layers=None, optimizer=None, mode: str = "new",
                 queue_size: int = 256, flush_seconds: float = 1.0, trajectory_dims: int = 3, seed: int = 0,
                 start_step: int | None = None, rank: int | None = None, world_size: int | None = None,
                 config: dict | None = None, budget: float | None = None, scaler=None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        refuse_unsupported(model)
        _check_settings(mode, queue_size, flush_seconds, trajectory_dims)
        self.outer, self.model = model, unwrap(model)
        self.run_dir = os.fspath(run_dir)
        self.schedule = as_schedule(every, "every")
        # default: the preset's detail steps, beside the activation statistics of the same step
        self.snapshot_schedule = as_schedule(snapshot_every, "snapshot_every") if snapshot_every is not None else None
        self.preset = get_preset(preset)
        self.budget = check_budget(budget)
        self.scaler = check_scaler(scaler)  # a GradScaler: local gradients are read scaled, divided by its scale
        self.optimizers = as_optimizers(optimizer)
        self.trajectory_dims = trajectory_dims
        dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist_on else 0)
        self.world_size = (world_size if world_size is not None
                           else (torch.distributed.get_world_size() if dist_on else 1))
        self._find_layers()
        self.shard_path = os.path.join(self.run_dir, schema.shard_name(self.rank))
        _refuse_shard_in_use(self.shard_path, mode)
        self._prepare_folder(mode)
        self._step = self._first_step(mode, start_step)
        self._mode = mode
        self._seed = seed
        self._set_up_probes()
        self._set_up_hooks(probe_batch, probe_layers)
        self.config = dict(config or {})
        self._scalar_names = ScalarNames(len(lr_names(self.optimizers)))
        if self.rank == 0:
            try:
                write_manifest(self.run_dir, self._manifest())
            except OSError as exc:
                raise StoreWriteError(f"tview could not write {self.run_dir}/{schema.MANIFEST_NAME}: {exc}") from None
        self._copy_lease = Lease()  # the weight copy, lent to the writer while it writes filters from it
        self._writer_cpu_at: tuple[int, float] | None = None  # (writer thread, its CPU seconds) at the last record
        self._writer = BackgroundWriter(self.shard_path, self._finalize, resume=(mode == "resume"),
                                        queue_size=queue_size, batch_seconds=float(flush_seconds),
                                        done=self._written)
        self._layout: ShardLayout | None = None
        self._recorded = 0
        self._closed = False
        self._failed_at: int | None = None
        self._t_prev = time.perf_counter()
        self._own = 0.0  # seconds in tview's code on the training thread since the last record was queued
        self._cost = CostBudget(self.budget) if self.budget is not None else None
        self._scheduled = 0  # scheduled steps so far (the budget's stride counts them)
        self._spent = 0.0  # tview_time summed over the records so far
        self._schedule()
        _WRITING[os.path.realpath(self.shard_path)] = self
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- setup ----------------------------------------------------------------------------
    def _find_layers(self):
        self.layers = recorded_layers(self.model)
        if not self.layers:
            raise ConfigError(f"{type(self.model).__name__} has no Conv, Linear, norm, activation or other module "
                              f"with parameters of its own to record")
        self.layer_names = [n for n, _ in self.layers]
        lazy = [n for n, m in self.layers if any(is_lazy(p) for p in own_params(m))]
        if lazy:
            raise ConfigError(f"tview: the layers {', '.join(map(repr, lazy))} have lazy parameters not made yet "
                              f"(LazyConv2d, LazyLinear, ...): run one forward pass of the model before making the "
                              f"Recorder, so that their shapes are known")
        self.layer_info = [layer_info(n, m) for n, m in self.layers]
        top = [n for n, _ in self.model.named_parameters(recurse=False)]
        if top:
            warnings.warn(f"tview: the parameters {', '.join(map(repr, top))} belong to the model itself, not to a "
                          f"module inside it: no layer holds them, they are not recorded (a module of their own, "
                          f"holding them, would be)", RuntimeWarning, stacklevel=3)
        sparse = [n for n, m in self.layers if sparse_grads(m)]
        if sparse:
            warnings.warn(f"tview: the embeddings {', '.join(map(repr, sparse))} have sparse gradients (sparse=True): "
                          f"tview records their activations, not their gradient and weight statistics",
                          RuntimeWarning, stacklevel=3)
        self.param_layer_ids = [i for i, (n, m) in enumerate(self.layers) if own_params(m) and n not in sparse]
        self.filter_modules = [(n, m) for n, m in self.layers if is_filter_layer(m)]
        self.filter_layers = [n for n, _ in self.filter_modules]

    def _layer_params(self) -> list[list[torch.Tensor]]:
        return [own_params(self.layers[i][1]) for i in self.param_layer_ids]

    def _set_up_probes(self, keep_origin: bool = False):
        ids = self.param_layer_ids
        self.pctx = None
        if ids:
            self._param_ids = [id(p) for ps in self._layer_params() for p in ps]
            self.pctx = ParamContext(self._layer_params(), [channel_dim(self.layers[i][1]) for i in ids])
        self.param_probes, self.act_probes = preset_probes(
            self.preset, [self.layer_names[i] for i in ids], self.world_size > 1, self.trajectory_dims, self._seed)
        if self.pctx is None:
            self.param_probes = []
        self._set_up_param_probes(keep_origin)
        self.rows = RowBuilder(self.layer_names, ids, self.pctx)
        self._act_by_mode = {OFF: (), SENTINELS: tuple(p for p in self.act_probes if p.cadence == EVERY),
                             DETAIL_STEP: tuple(self.act_probes)}
        self._row_index = RowIndex()

    def _set_up_param_probes(self, keep_origin: bool = False):
        """Each parameter probe's setup; init_distance's against the weights the run started from (kept beside
        the shard when the run began, read back on resume and where `keep_origin`: parameters replaced mid-run)."""
        origin = None
        if any(isinstance(p, par.InitDistance) for p in self.param_probes):
            path = origin_path(self.run_dir, self.rank)
            self.pctx.origin_path = path  # init_distance reads W0 back from it (never held in memory)
            if (self._mode == "resume" or keep_origin) and os.path.exists(path):
                origin = load_origin(path, self.pctx.params)
            elif self._mode != "resume" or not os.path.exists(self.shard_path):
                save_origin(path, self.pctx.params)
        for probe in self.param_probes:
            if origin is not None and isinstance(probe, par.InitDistance):
                with weights_set_to(self.pctx.params, origin):
                    probe.setup(self.pctx)
            else:
                probe.setup(self.pctx)

    def _refresh_params(self):
        """New parameter objects in the layers: follow them. FSDP2 (fully_shard after the Recorder was made) puts
        them there before training; a user mid-run (`layer.weight = nn.Parameter(...)`,
        `load_state_dict(..., assign=True)`): said once, init_distance still measured from the run's start, the
        local gradients' hooks moved to the new ones. Modules added to the model since: said once."""
        self._report_unrecorded()
        if self.pctx is None:
            return
        params = self._layer_params()
        if [id(p) for ps in params for p in ps] == self._param_ids:
            return
        if self._recorded:
            old = set(self._param_ids)
            names = [self.layer_names[i] for i, ps in zip(self.param_layer_ids, params)
                     if any(id(p) not in old for p in ps)]
            self._report_replaced(names)
        before = self.pctx.params
        self._set_up_probes(keep_origin=self._recorded > 0)
        self.clock.follow(self.pctx.params)
        self._follow_local_grads(before)

    def _report_replaced(self, names: list[str]):
        ddp = find_wrapper(self.outer, nn.parallel.DistributedDataParallel) is not None
        self._say_once("replaced", f"tview: parameters of {', '.join(map(repr, names))} were replaced by new tensors "
                       f"before step {self._step} (a module's parameter assigned, or load_state_dict(assign=True)); "
                       f"tview records the new ones from this step on (update_ratio from the next recorded step)"
                       + (". DDP does not all-reduce a parameter it was not made with: each rank's copy of it now "
                          "trains apart from the others'; wrap the model in DDP again after replacing parameters"
                          if ddp else ""), stacklevel=4)

    def _report_unrecorded(self):
        """Modules that joined the model after the Recorder was made are not recorded, recorded layers renamed by a
        module inserted or deleted before them keep their first names, and layers taken out of the model record no
        more (a shard's layers are fixed when the Recorder is made): said once, on the first recorded step that
        finds one, then no longer watched."""
        new, renamed, gone = self._module_watch.changes() if self._module_watch is not None else ([], [], [])
        if not (new or renamed or gone):
            return
        self._module_watch.remove()
        self._module_watch = None
        said = [f"the modules {', '.join(map(repr, new))} joined it after the Recorder was made (added, swapped in, "
                f"or given parameters): they are not recorded" if new else "",
                "layers were renamed (a module inserted or deleted before them): "
                + ", ".join(f"{old!r} is now {now!r}" for old, now in renamed)
                + "; they are recorded under their first names" if renamed else "",
                f"the layers {', '.join(map(repr, gone))} left it: their rows stop" if gone else ""]
        warnings.warn(f"tview: the model changed at step {self._step}: " + "; ".join(t for t in said if t)
                      + " (a run's layers are fixed when the Recorder is made; a swapped-out module's layer reads the "
                      "old one); make the Recorder after the model is complete", RuntimeWarning, stacklevel=5)

    def _set_up_hooks(self, probe_batch, probe_layers):
        self.probe = None
        if probe_batch is not None:
            self.probe = ProbeBatch(self.model, self.layers,
                                    probe_batch, probe_layers if probe_layers is not None else self.filter_layers)
        elif probe_layers:
            raise ConfigError("probe_layers given without probe_batch: pass the batch whose feature maps to keep")
        self._channels: dict[int, int] = {}  # activation widths seen in the forward pass
        self._recording, self._detail_now = False, False
        self._set_act_probes(())
        self._examples = 0
        self._pending_act: list[tuple[int, int | None, list]] = []
        self._kept: list[tuple] = []  # (layer index, output, its version, its sample copied or None) this forward
        self._host_batch: HostBatch | None = None  # the CPU's own path: this forward's outputs' samples so far
        self._host_buffer: np.ndarray | None = None  # and the buffer they are copied into, reused when small,
        self._host_used = 1 << 16  # else made at the size the last forward pass used
        self._pending_batches: list[tuple] = []  # (layer indices, channels, row starts, [(probe, partials)])
        self._inplace_victims: set[int] = set()  # layers whose output a later layer modifies in place
        self._forward_order: dict[int, int] = {}  # layer index -> the order its hook first fired in
        self._forward_seen: set[int] = set()  # layers whose hook fired in this step's forward (not in backward)
        self._open: tuple | None = None  # a forward begun and not ended: (kept, pending, host batch?, examples) before
        self._eval_forward = False  # a forward of the model in eval mode with autograd on ran this step
        self._problems: set[str] = set()
        self._last_grads: tuple | None = None  # (a weak reference to the gradient last read, its version, the step)
        self._unguard = None  # where this Recorder asked dynamo to guard on hooks (guard_hooks): gives it back
        self._hooks = []  # on the parameters (for good)
        self._forward_hooks = ForwardHooks(self.outer, self.model)  # on from the start: torch.compile traces them
        self._forward_hooks.add(self.outer, Hook(self._count_examples), pre=True, kwargs=True)
        if self.act_probes:
            for i, (_, m) in enumerate(self.layers):
                self._forward_hooks.add(m, self._make_forward_hook(i))
            self._forward_hooks.add(self.outer, Hook(self._end_forward))
            self._recompile_if_compiled()
        self.clock = StepClock(self.optimizers, [p for ps in self._layer_params() for p in ps])
        self._set_up_local_grads()
        self._module_watch = ModuleWatch(self.model, self.layers)
        self._hooks.append(self._module_watch)  # removed with tview's hooks
        self._set_up_forward_wait()

    def _recompile_if_compiled(self):
        """A compiled model: dynamo guards on hooks from now on (guard_hooks); one that already ran ignores hooks
        added since (that code was traced without the guard): drop dynamo's compiled code once so the next call
        traces the model with tview's hooks."""
        if runs_compiled(self.outer, self.model):
            self._guard_hooks()
            if compiled_anything():
                torch._dynamo.reset()

    def _guard_hooks(self):
        if self._unguard is None:
            guard_hooks()
            self._unguard = weakref.finalize(self, unguard_hooks)  # at close(), or when dropped unclosed

    def _set_up_local_grads(self):
        """Under DDP, this rank's gradient before the all-reduce: from a DDP communication hook; where the
        user registered one already, from hooks on the parameters that take a gradient."""
        self.local_grads, self._t_last_grad = None, None
        self._param_local: dict[int, torch.Tensor] = {}  # the fallback's local gradients, per parameter
        self._local_hooks: list = []  # the fallback's hooks (in self._hooks too)
        self._local_failed = False  # the fallback failed once: it takes nothing more
        self._ddp_reduced: dict[int, torch.Tensor] | None = None  # under DDP: the parameters it all-reduces
        if self.pctx is None or not any(isinstance(p, par.LocalGradNorm) for p in self.param_probes):
            return
        ddp = find_wrapper(self.outer, nn.parallel.DistributedDataParallel)
        if ddp is not None:
            try:
                self.local_grads = LocalGrads(ddp, self.pctx.params, self.scaler, failed=self._local_grads_failed)
                return
            except RuntimeError as exc:  # one comm hook per DDP model: the user's stays
                warnings.warn(f"tview: DDP already has a communication hook ({exc}); local gradient norms are "
                              f"measured with parameter hooks instead", RuntimeWarning, stacklevel=3)
            self._ddp_reduced = ddp_reduced(ddp)
        self._hook_local_grads()

    def _local_grads_failed(self, exc: BaseException):
        self._report("local_grad_norm (in DDP's communication hook; the all-reduce goes on)", exc)

    def _hook_local_grads(self):
        """The fallback: a hook on each parameter that takes a gradient (at the current positions)."""
        for k, p in enumerate(self.pctx.params):
            if p.requires_grad:
                self._local_hooks.append(p.register_hook(Hook(self._make_grad_hook(k))))
        self._hooks += self._local_hooks

    def _follow_local_grads(self, before: list[torch.Tensor]):
        """Parameters replaced (`before`: the old ones): the local gradients follow the new ones. The fallback's
        hooks move to them, and what the hooks of parameters kept took this step moves to their new positions; a
        new parameter is outside DDP's buckets (DDP reduces those it was made with), so its gradient (.grad) so far
        this step, taken before its hook was on it, is this rank's own."""
        if self.local_grads is not None:
            self.local_grads.follow(self.pctx.params)
        if not self._local_hooks:
            return
        for h in self._local_hooks:
            h.remove()
            self._hooks.remove(h)
        self._local_hooks = []
        self._hook_local_grads()
        now = {id(p): k for k, p in enumerate(self.pctx.params)}
        taken = {now[id(before[k])]: g for k, g in self._param_local.items() if id(before[k]) in now}
        self._param_local = {**self._unreduced_grads(), **taken}

    def _unreduced_grads(self) -> dict[int, torch.Tensor]:
        """Under DDP, the gradients (.grad) of the parameters outside its buckets: this rank's own."""
        if self._ddp_reduced is None:
            return {}
        return {k: g.detach().clone() for k, g in unreduced_grads(self.pctx.params, self._ddp_reduced)}

    def _set_up_forward_wait(self):
        """Under DDP, the time from entering the DDP wrapper to entering the model inside it: the wait in DDP's
        broadcast of buffers (BatchNorm statistics) for the slowest rank, which counts as wait, not work. Only
        where the wrapper runs eagerly (not inside a compiled region, where timing would break the graph)."""
        self._t_ddp_enter, self._forward_wait = None, 0.0
        chain = wrapper_chain(self.outer)
        ddp = next((i for i, m in enumerate(chain) if isinstance(m, nn.parallel.DistributedDataParallel)), None)
        if ddp is None or any(is_compiled(m) for m in chain[:ddp]):
            return
        self._forward_hooks.add(chain[ddp], Hook(self._enter_ddp), pre=True)
        self._forward_hooks.add(chain[ddp + 1], Hook(self._enter_model), pre=True)

    def _enter_ddp(self, module, inputs):
        self._t_ddp_enter = time.perf_counter()

    def _enter_model(self, module, inputs):
        if self._t_ddp_enter is not None:
            self._forward_wait += time.perf_counter() - self._t_ddp_enter
            self._t_ddp_enter = None

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

    @property
    def _resume_path(self) -> str:
        return os.path.join(self.run_dir, f"rank-{self.rank:05d}.resume.json")

    def _first_step(self, mode: str, start_step: int | None) -> int:
        """Where step counting starts: start_step, else on resume the training step the last Recorder of this
        rank reached (kept at close), else the step after the last recorded one (said: steps may be off)."""
        if start_step is not None:
            if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
                raise ConfigError(f"start_step must be a non-negative integer, got {start_step!r}")
            return start_step
        if mode != "resume" or not os.path.exists(self.shard_path):
            return 0
        try:
            with open(self._resume_path) as f:
                return int(json.load(f)["next_step"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        from tview.store.reader import ShardReader
        shard = ShardReader(self.shard_path)
        try:
            steps = shard.steps(schema.TABLE_SCALARS)
        finally:
            shard.close()
        if len(steps):
            warnings.warn(f"tview: {self._resume_path} is missing (the last run did not close): resuming at step "
                          f"{int(steps[-1]) + 1}, after the last recorded one; pass start_step= for the true "
                          f"training step", RuntimeWarning, stacklevel=3)
        return int(steps[-1]) + 1 if len(steps) else 0

    def _manifest(self) -> dict:
        return {"run_id": os.path.basename(os.path.abspath(self.run_dir)), "created_unix": time.time(),
                "world_size": self.world_size, "layers": self.layer_info, "model": type(self.model).__name__,
                "preset": self.preset.name, "schedule": repr(self.schedule), "budget": self.budget,
                "snapshot_schedule": repr(self.snapshot_schedule) if self.snapshot_schedule else "detail steps",
                "probe_layers": self.probe.layer_names if self.probe else [],
                "filter_layers": self.filter_layers, "trajectory_dims": self.trajectory_dims,
                "probes": [f"{p.table} ({p.cadence})" for p in self.param_probes + self.act_probes],
                "hist": {"lo": schema.HIST_LO, "hi": schema.HIST_HI, "per_decade": schema.HIST_PER_DECADE},
                "torch_version": torch.__version__, "config": self.config}

    def _schedule(self):
        """Decide what the current step records; the hooks read it (they stay installed)."""
        self._recording = self._failed_at is None and bool(self.schedule(self._step)) and self._within_budget()
        self._detail_now = self._recording and self._recorded % self.preset.detail_every == 0
        mode = (DETAIL_STEP if self._detail_now else SENTINELS) if self._recording else OFF
        self._set_act_probes(self._act_by_mode[mode])
        self._forward_hooks.want(self._recording)
        self.clock.grads_of = self.pctx.params if self._recording and self.pctx is not None else None
        if self.local_grads is not None:
            self.local_grads.active = self._recording

    def _within_budget(self) -> bool:
        """A scheduled step: recorded, unless the budget's stride leaves it out."""
        if self._cost is None:
            return True
        ordinal, self._scheduled = self._scheduled, self._scheduled + 1
        return self._cost.take(ordinal)

    def _due(self, probe) -> bool:
        return self._recording and (probe.cadence == EVERY or self._detail_now)

    # -- hooks -------------------------------------------------------------------------------
    def _set_act_probes(self, probes: tuple):
        """The activation probes the hooks run now, and whether any of them reads one output at a time (kept beside
        them: the hook asks on every layer)."""
        self._act_probes_now = probes
        self._singles_now = any(not p.batched for p in probes)

    def _count_examples(self, module, args, kwargs):
        """The batch size: the first dimension of the forward's first tensor, positional or keyword, or inside a
        dict, list or tuple (model(x), model(x=x), model({"image": x}))."""
        training = self._recording and _training(module)
        self._eval_forward |= self._recording and not module.training and torch.is_grad_enabled()
        if self.act_probes and not torch.compiler.is_compiling():
            self._forward_begins(training)
        if training:
            first = _first_tensor((args, kwargs))
            if first is not None and first.dim():
                self._examples += first.shape[0]

    def _make_forward_hook(self, index: int):
        def hook(module, inputs, output):  # returns at once on a step that records no activation statistics
            probes = self._act_probes_now
            if not probes or not (torch.is_grad_enabled() or self._open is not None):
                return  # inference: eager, a no_grad part of the model's training forward counts (a frozen backbone)
            if not module.training and (torch.compiler.is_compiling() or self._open is None):
                return  # eval mode, outside the model's training forward (eager: a frozen BatchNorm inside it counts)
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                output = self._main_output(index, output)
                if output is None:
                    return
            if torch.compiler.is_compiling():
                self._activation_parts(index, output, probes)
                return
            if not output.numel():  # an empty batch: nothing measured (its statistics would read 0, or 0/0)
                self._forward_seen.add(index)  # (the hooks ran: not silent)
                return
            t0 = time.perf_counter()
            try:
                self._keep(index, output, probes)
            except Exception as exc:  # tview's failure never stops training: said once, then off
                self._activations_failed(exc)
            self._own += time.perf_counter() - t0
        return Hook(hook)  # a copy of the model (deepcopy, pickle) holds a hook that does nothing

    def _main_output(self, index: int, output) -> torch.Tensor | None:
        """A layer's output that is not a floating-point tensor: the first floating-point tensor of a tuple or list
        ((x, aux), nn.MultiheadAttention's (out, weights), an LSTM's (out, (h, c)), a vector quantizer's (codes,
        quantized)); of another (a dict, None, integer codes alone), no activation statistics, said once."""
        if isinstance(output, (tuple, list)):
            found = next((t for t in output if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
            if found is not None:
                return found
        if f"output of {index}" not in self._problems and not torch.compiler.is_compiling():
            what = f"{output.dtype} tensor" if isinstance(output, torch.Tensor) else type(output).__name__
            self._say_once(f"output of {index}", f"tview: layer {self.layer_names[index]!r} returns a {what}, not a "
                           f"floating-point tensor (nor a tuple or list holding one): no activation statistics of it",
                           stacklevel=3)
        return None

    def _activations_failed(self, exc: BaseException):
        self._report("activation statistics", exc)
        self._act_by_mode = {mode: () for mode in self._act_by_mode}
        self._set_act_probes(())
        self._kept, self._host_batch = [], None

    def _keep(self, index: int, output: torch.Tensor, probes: tuple):
        """Eager: keep the output for the batch where the forward pass ends (no op: a hook runs between layers, where
        every Python call is slow, the CPU's caches holding the layer's data); where a later layer modifies it in
        place, its sample is copied now. A probe that reads one output at a time runs here."""
        if self._recomputed(index):
            return
        order = self._forward_order
        if index not in order:
            order[index] = len(order)
        if self._singles_now and not self._one_at_a_time(index, output, probes):
            return
        if index not in self._inplace_victims:
            self._kept.append((index, output, output._version, None))
        elif host_shortcuts(output):  # the CPU's own path: into the batch's buffer
            self._host_batch_now().add(output, index)
        else:  # (its sample, its layout); under no_grad: no detach op
            with torch.no_grad():
                flat, layout = flat_sample(output, self.preset.act_sample)
                self._kept.append((index, output, output._version, (flat.clone(), layout)))

    def _recomputed(self, index: int) -> bool:
        """A layer's forward run again in the backward pass, its output kept in this step's forward already:
        torch.utils.checkpoint (non-reentrant) recomputing it. (Reentrant checkpointing runs the forward under
        no_grad, left out: its recomputation is the one kept.)"""
        if _graph_task_id() == -1:
            self._forward_seen.add(index)
            return False
        return index in self._forward_seen

    def _host_batch_now(self) -> HostBatch:
        if self._host_batch is None:
            buffer = self._host_buffer if self._host_buffer is not None else np.empty(self._host_used, np.float32)
            self._host_batch = HostBatch(self.preset.act_sample, buffer)
        return self._host_batch

    def _forward_begins(self, training: bool):
        """A forward of the model begins (eager): where the last one never ended (it raised, and the training loop
        caught the error and went on: an out-of-memory batch skipped), what it kept is dropped. While a training
        forward runs (`_open` set), its layers in eval mode (frozen BatchNorm statistics) are recorded too."""
        self._drop_unfinished()
        if training:
            self._open = (len(self._kept), len(self._pending_act), self._host_batch is not None, self._examples)

    def _drop_unfinished(self):
        """Drop the outputs and examples of a forward pass that began and never ended."""
        if self._open is not None:
            kept, single, had_host, examples = self._open
            del self._kept[kept:]
            del self._pending_act[single:]
            if not had_host:
                self._host_batch = None
            self._examples, self._open = examples, None

    def _end_forward(self, module, inputs, output):
        if torch.compiler.is_compiling():
            return
        self._open = None
        if self._kept or self._host_batch is not None:
            t0 = time.perf_counter()
            self._forward_hooks.eager_seen = True
            try:
                self._reduce_kept(output)
            except Exception as exc:
                self._activations_failed(exc)
            self._own += time.perf_counter() - t0

    def _reduce_kept(self, model_output=None):
        """The batched probes over every output kept in this forward pass, in one batch. An output that a
        later layer modified in place (BatchNorm, then ReLU(inplace=True)) is left out this time; from the
        next recorded step on, its hook copies its sample (its NaN and Inf are read from the modified tensor:
        a ReLU keeps both but a -Inf). On the CPU, the outputs are scanned for NaN and Inf only where the
        model's output holds one (one pass over every activation costs ~5% of a CPU step): a NaN or an Inf
        in a layer reaches the model's output, but for a -Inf that a ReLU turns into 0."""
        kept, self._kept = self._kept, []
        host, self._host_batch = self._host_batch, None
        fresh = []
        for entry in kept:
            if entry[1]._version != entry[2] and entry[3] is None:
                self._inplace_victims.add(entry[0])
            else:
                fresh.append(entry)
        probes = [p for p in self._act_probes_now if p.batched]
        if not probes or not (fresh or host):
            return
        if host is not None or host_shortcuts(fresh[0][1]):
            indices, batch = self._host_reduced(host, fresh, model_output)
        else:
            indices = [e[0] for e in fresh]
            batch = ActivationBatch([e[1] for e in fresh], self._row_index, per_channel=self.preset.act_sample,
                                    samples={k: e[3] for k, e in enumerate(fresh) if e[3] is not None},
                                    scan=not _finite_on_host(model_output),
                                    wants={k for p in probes for k in p.batch_stats})
        with torch.no_grad():  # no detach op per output
            parts = [(p, p.compute_batch(batch)) for p in probes]
        self._pending_batches.append((indices, [_channels(t) for t in batch.outputs], batch.row_start, parts))

    def _host_reduced(self, batch: HostBatch | None, fresh: list, model_output) -> tuple[list, HostBatch]:
        """The CPU's own path: the kept outputs' samples join the batch (after those copied in the hooks)."""
        batch = batch or self._host_batch_now()
        self._host_batch = None
        for index, output, _, _ in fresh:
            batch.add(output, index)
        batch.close(scan=not _finite_on_host(model_output))
        # reused by the next forward pass (this batch is reduced now), unless it is big (preset "full": every value);
        # one grown by doubling is replaced by one of the size this forward pass used
        keep, self._host_used = batch.used * 4 <= HOST_BUFFER_KEPT, batch.used
        self._host_buffer = (batch.buffer if 4 * batch.used >= 3 * batch.buffer.size else
                             np.empty(batch.used, dtype=np.float32)) if keep else None
        return batch.indices, batch

    def _activation_parts(self, index: int, output: torch.Tensor, probes: tuple):
        """Compiled: every probe on this one output, in the graph (inductor fuses the reductions), their parts packed
        in one tensor (act.packed_parts: a graph output and a transfer slot each cost host time)."""
        batch = ActivationBatch([output], None, per_channel=self.preset.act_sample)
        batched = act.packed_parts([(p, p.compute_batch(batch)) for p in probes if p.batched])
        self._pending_batches.append(([index], [_channels(output)], batch.row_start, batched))
        self._one_at_a_time(index, output, probes)

    def _one_at_a_time(self, index: int, output: torch.Tensor, probes: tuple) -> bool:
        """The probes that read one output at a time, on this one; True where batched probes are left."""
        single = [p for p in probes if not p.batched]
        if single:
            ctx = act.ActivationContext(output)
            self._pending_act.append((index, _channels(output), [(p, p.compute(ctx)) for p in single]))
        return len(single) < len(probes)

    def _make_grad_hook(self, k: int):
        def hook(grad):
            self._t_last_grad = t0 = time.perf_counter()
            if self._recording and not self._local_failed:
                try:
                    self._take_local_grad(k, grad)
                except Exception as exc:  # never the backward pass: the local norms stop, said once
                    self._local_grads_off(exc)
                self._own += time.perf_counter() - t0
            return None
        return hook

    def _take_local_grad(self, k: int, grad: torch.Tensor) -> None:
        prev, scale = self._param_local.get(k), live_scale(self.scaler)
        local = grad.detach().clone() if scale is None else grad.detach() / scale  # (a copy either way)
        self._param_local[k] = local if prev is None else prev + local

    def _local_grads_off(self, exc: BaseException) -> None:
        """The parameter hooks' local gradients failed: they take none from now on (the hooks stay, doing nothing:
        removed while autograd runs them, a hook could be skipped), what they took is dropped, said once."""
        self._report("local_grad_norm (from the parameters' gradient hooks; the backward pass goes on)", exc)
        self._local_failed, self._param_local = True, {}

    def _report(self, what: str, exc: BaseException):
        """Say once per kind of failure what tview stopped recording, and why; training goes on."""
        self._say_once(what, f"tview: recording {what} failed at step {self._step} ({type(exc).__name__}: {exc}); "
                       f"tview stops recording it, training goes on", stacklevel=3)

    def _say_once(self, key: str, message: str, stacklevel: int) -> None:
        """A RuntimeWarning, the first time `key` comes up in this Recorder; stacklevel: warnings.warn's, counted
        from the caller."""
        if key not in self._problems:
            self._problems.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)

    # -- the per-step call ----------------------------------------------------------------
    def step(self, loss=None, batch_size: int | None = None, **scalars) -> None:
        """Close the current optimizer step. Call once per step, after optimizer.step(). The step counter
        advances even when this raises (a refused scalar, a write failure said once)."""
        now = time.perf_counter()
        if self._closed:
            raise TviewError(f"Recorder for {self.run_dir} is closed; step() after close()")
        try:
            if self._failed_at is None and self._writer.error is not None:
                self._fail()
            if self._failed_at is not None and (self._step - self._failed_at) % 50 == 0:
                warnings.warn(f"tview: recording into {self.shard_path} stopped at step {self._failed_at} "
                              f"({self._writer.error}); training goes on unrecorded", RuntimeWarning, stacklevel=2)
            if self._recording:
                self._record(now, loss, batch_size, scalars)
        finally:
            self._pending_act, self._kept, self._pending_batches, self._host_batch = [], [], [], None
            self._examples = 0
            self._forward_seen.clear()
            self._open, self._eval_forward = None, False
            if self.local_grads is not None:
                self.local_grads.parts = []
            self._param_local = {}
            self._forward_wait = 0.0
            self._step += 1
            self._t_prev = now
            self._schedule()
            self.clock.reset(self._recording)
            self._own += time.perf_counter() - now  # (_record took its share up to the record: see _own_time)

    def _fail(self):
        """The writer failed: stop recording (hooks off) and raise its error once, here."""
        self._failed_at = self._step
        self._recording = False
        self._set_act_probes(())
        self._remove_hooks()
        self._writer.check()

    def _scalars(self, now: float, loss, batch_size, scalars: dict) -> tuple[dict, dict]:
        """(host scalars, one-element tensors still on the device), user values checked."""
        user = {}
        for name, value in ([("loss", loss)] if loss is not None else []) + list(scalars.items()):
            self._scalar_names.check(name)
            user[name] = scalar_value(name, value)
        step_time = now - self._t_prev
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, float))):
            raise ConfigError(f"step(): batch_size must be a number of examples, got {batch_size!r}")
        examples = batch_size if batch_size is not None else self._examples
        host = {"step_time": step_time, "examples": float(examples),
                "examples_per_sec": examples / step_time if step_time > 0 else float("nan"),
                "host_rss_bytes": host_rss_bytes()}
        host.update(self._timeline(now))
        if self.optimizers:  # 1: no optimizer.step() ran this step (GradScaler skipped it: Inf/NaN gradients)
            host["optimizer_skipped"] = float(self.clock.t_opt_start is None)
        lrs = self.clock.current_lrs()
        for name, lr in zip(lr_names_of(len(lrs)), lrs):
            user[name] = lr.detach().reshape(1) if isinstance(lr, torch.Tensor) else float(lr)
        if self.pctx is not None and self.pctx.device.type == "cuda":
            host["cuda_allocated_bytes"] = float(torch.cuda.memory_allocated(self.pctx.device))
            host["cuda_max_allocated_bytes"] = float(torch.cuda.max_memory_allocated(self.pctx.device))
        host.update({k: v for k, v in user.items() if not isinstance(v, torch.Tensor)})
        return host, {k: v for k, v in user.items() if isinstance(v, torch.Tensor)}

    def _timeline(self, now: float) -> dict:
        """busy_time: this rank's own forward and backward (to its last local gradient), without the wait
        for the others that makes every rank's step_time equal under DDP; wait_time: from there to the start
        of optimizer.step() (its wait in the all-reduce), plus its wait in DDP's broadcast of buffers at the
        forward's start; after_step_time: from the end of optimizer.step()
        to step() (logging, checkpoints, evaluation after the step); cpu_wait_time: the step's wait for a CPU."""
        out = self.clock.cpu_wait_time()
        t_grad = self.local_grads.t_last if self.local_grads is not None else self._t_last_grad
        if t_grad is not None and t_grad > self._t_prev:
            out["busy_time"] = t_grad - self._t_prev - self._forward_wait
            if self.clock.t_opt_start is not None and self.clock.t_opt_start >= t_grad:
                out["wait_time"] = self.clock.t_opt_start - t_grad + self._forward_wait
        if self.clock.t_opt_end is not None and self.clock.t_opt_end > self._t_prev:
            out["after_step_time"] = now - self.clock.t_opt_end
        return out

    def _record(self, now: float, loss, batch_size, scalars):
        self._drop_unfinished()  # a forward that raised: its outputs and examples are not the step's
        host_scalars, device_scalars = self._scalars(now, loss, batch_size, scalars)  # a ConfigError is the user's
        try:
            self._refresh_params()  # fully_shard, or a parameter the user replaced
            self._copy_lease.wait(self._writer.alive)  # the writer may still be reading the copy's filters
            with self._gradients_restored(), self._fresh_gradients():
                param, param_step = self._param_results()
            snap, kept = self._snapshot_if_due(param_step)
            if self._kept:  # a forward that did not end in the model's own forward (its parts called one by one)
                self._reduce_kept()
            pending, batches = self._pending_act, self._pending_batches
            if not pending and not batches and self._act_probes_now:
                self._hooks_silent()
            for index, channels in [e[:2] for e in pending] + [x for b in batches for x in zip(b[0], b[1])]:
                if channels is not None:
                    self._channels.setdefault(index, int(channels))
            transfer = HostTransfer([device_scalars] + [p for _, p in param] +
                                    [parts for _, _, results in pending for _, parts in results] +
                                    [parts for *_, results in batches for _, parts in results], native=(snap,),
                                    kept=kept)
            if self._layout is None:
                self._layout = self._make_layout()
        except Exception as exc:  # tview's own failure: said once, the step goes unrecorded, training goes on
            self._report("this step", exc)
            return
        host_scalars["tview_time"] = self._own_time(now)
        if self._cost is not None:
            host_scalars["tview_stride"] = self._keep_budget(now, host_scalars["tview_time"])
        item = {"step": self._step, "wall_time": time.time(), "scalars": host_scalars,
                "device_scalars": device_scalars, "param": param, "act": pending, "act_batches": batches,
                "snapshot": snap, "kept": kept[1] if kept else {}, "transfer": transfer}
        if transfer.borrows:  # written from the weight copy itself: lent until written, the writer woken now
            self._copy_lease.lend()
            item["lease"] = self._copy_lease
        if not self._writer.put(self._layout, item, urgent=transfer.borrows):
            self._written(item)
        self._recorded += 1

    def _keep_budget(self, now: float, own: float) -> float:
        """The stride this record was taken at; the next one's from tview's cost so far (its time on the training
        thread and its writer's CPU). Said once when the stride first goes up."""
        stride = self._cost.stride
        self._spent += own
        self._cost.recorded(now, self._spent + self._writer.cpu_seconds())
        if self._cost.stride > stride:
            self._say_once("budget", f"tview: recording as scheduled took {self._cost.over:.1%} of the training time "
                           f"on rank {self.rank}, over budget={self.budget:g}: recording one scheduled step in "
                           f"{self._cost.stride} from now on (the scalar tview_stride says the stride)", stacklevel=4)
        return float(stride)

    def _own_time(self, now: float) -> float:
        """tview_time: seconds in tview's code on the training thread since the last record (its forward and gradient
        hooks, the end of the forward pass, DDP's communication hook, step()), up to now; step(), entered at `now`,
        counts the rest of itself toward the next record."""
        t = time.perf_counter()
        own = self._own + (t - now)
        if self.local_grads is not None:
            own, self.local_grads.own = own + self.local_grads.own, 0.0
        self._own = now - t  # step()'s end adds its whole time: the part after this one is left
        return own

    def _hooks_silent(self):
        """A training step ran (gradients exist) but no forward hook fired: compiled code traced before tview's
        hooks were installed runs without them (torch.compile of the model, called before the Recorder was
        made, with the Recorder given the plain model). Said once; dynamo's code is dropped so the next call
        traces the model with the hooks."""
        if ("hooks" in self._problems or self._forward_seen or self.pctx is None
                or all(p.grad is None for p in self.pctx.params)):  # _forward_seen: they ran (in a forward that raised)
            return
        if self._eval_forward:
            self._trained_in_eval_mode()
            return
        if not compile_in_play(self.outer, self.model):
            return  # eager, no forward this step (step() called again, or gradients kept from the last one)
        self._say_once("hooks", "tview: no activation statistics came from this step's forward pass: the model runs "
                       "compiled code traced while tview's hooks were not installed (torch.compile called before the "
                       "Recorder was made, or a model that ran eagerly first compiled on a step tview did not record). "
                       "tview drops torch.compile's cached code once so the next step traces the hooks; give the "
                       "Recorder the compiled model, or make it before the first compiled call, to avoid the retrace",
                       stacklevel=4)
        self._guard_hooks()
        torch._dynamo.reset()

    @contextlib.contextmanager
    def _gradients_restored(self):
        """The gradients as optimizer.step() left them, while the parameter probes read them: a zero_grad() between
        optimizer.step() and step() (at the loop's end) set them to None (put back for the read, None again
        after), or zeroed them in place (set_to_none=False: left out this step, as without a gradient, and said
        once: they would read 0)."""
        kept = self.clock.kept_grads
        if kept is None or self.pctx is None or self.clock.grads_of is not self.pctx.params:  # (params replaced)
            yield
            return
        changed = [(p, p.grad, g) for p, (g, version) in zip(self.pctx.params, kept)
                   if g is not None and (p.grad is None or (p.grad is g and g._version != version))]
        if any(now is not None for _, now, _ in changed):
            self._report_zeroed()
        with _grads_swapped([(p, None if now is not None else g) for p, now, g in changed]):
            yield

    @contextlib.contextmanager
    def _fresh_gradients(self):
        """Gradients a recorded step read before (the same tensors, unchanged: no backward pass since, as where step()
        is called twice for one optimizer step or in a loop that does not train) are left out while the parameter
        probes read, and said once: their statistics would be an earlier step's under this step's number."""
        params = self.pctx.params if self.pctx is not None else []
        first = next((p.grad for p in params if p.grad is not None), None)
        last, self._last_grads = self._last_grads, None
        if first is not None:
            self._last_grads = (weakref.ref(first), first._version, self._step)
        if first is None or last is None or last[0]() is not first or last[1] != first._version:
            yield
            return
        self._say_once("stale", f"tview: step() at step {self._step} came with the gradients that step {last[2]} read, "
                       f"unchanged: no backward pass since (step() called twice for one optimizer step, for a skipped "
                       f"batch, or in a loop that does not train); gradient statistics are left out of such steps",
                       stacklevel=6)
        with _grads_swapped([(p, None) for p in params if p.grad is not None]):
            yield

    def _report_zeroed(self):
        self._say_once("zeroed", f"tview: the gradients were changed in place between optimizer.step() and "
                       f"Recorder.step() at step {self._step}: zeroed (zero_grad(set_to_none=False)) or added to by "
                       f"another backward pass (a GAN's generator loss through this discriminator); the gradients the "
                       f"optimizer used are gone, so their statistics are left out; call rec.step() right after "
                       f"optimizer.step() (zero_grad() with set_to_none, the default, is read as it was)", stacklevel=6)

    def _trained_in_eval_mode(self):
        """The step's only forward passes ran with the model in eval mode (model.eval(), autograd on): said once."""
        self._say_once("eval", f"tview: the model ran in eval mode (model.eval()) in the forward passes of step "
                       f"{self._step} and trained: tview records activation statistics and examples of forwards in "
                       f"train mode only (an eval forward is validation); train with model.train() (a layer in eval "
                       f"mode inside it, a frozen BatchNorm, is recorded)", stacklevel=5)

    def _param_results(self) -> tuple[list, ParamStep | None]:
        """((probe, partial results) of each parameter probe due now, what they read); a probe that fails is
        said and dropped."""
        param_step = self._param_step()
        param = []
        for probe in list(self.param_probes):
            if not self._due(probe):
                continue
            try:
                parts = probe.compute(param_step)
            except Exception as exc:
                self._report(f"{probe.table} ({type(probe).__name__})", exc)
                self.param_probes.remove(probe)
                continue
            if parts is not None:
                param.append((probe, parts))
        return param, param_step

    def _snapshot_if_due(self, param_step: ParamStep | None) -> tuple[dict, tuple | None]:
        """(the snapshot's tensors, (the weight copy, its views of the filters) or None): the filters are read
        from the copy the update ratio keeps where it holds this step's weights (no copy of them is made)."""
        due = self.snapshot_schedule(self._step) if self.snapshot_schedule else self._detail_now
        if not due:
            return {}, None
        kept = kept_filters(self.filter_modules, self.pctx, param_step is not None and param_step.gathered_now)
        return snapshot(self.filter_modules, self.probe, with_filters=kept is None), kept

    def _param_step(self) -> ParamStep | None:
        """What the parameter probes read this step; None for a model without parameters. Local gradients
        (squared norms per parameter tensor) only under DDP."""
        if self.pctx is None:
            return None
        local = self.local_grads.take() if self.local_grads is not None else self._param_local_norms()
        return ParamStep(self.pctx, local)

    def _param_local_norms(self) -> PerBlock | None:
        """The parameter hooks' local gradients as squared norms per parameter tensor (NaN where none)."""
        if not self._param_local:
            return None
        ks = sorted(self._param_local)
        try:
            return squares_in_order([(ks, squared_norms([self._param_local[k] for k in ks]))], len(self.pctx.params))
        except Exception as exc:  # the step's other statistics are recorded
            self._local_grads_off(exc)
            return None

    def _channel_widths(self) -> dict[str, dict[str, int]]:
        acts = {self.layer_names[i]: c for i, c in self._channels.items()}
        params = {self.layer_names[i]: c for i, c in zip(self.param_layer_ids, self.pctx.channel_widths) if c} \
            if self.pctx else {}
        return {col.name: (acts if probe.reads == "activation" else params)
                for probe in self.param_probes + self.act_probes for col in probe.columns
                if col.kind == schema.CHANNEL}

    def _make_layout(self) -> ShardLayout:
        layers = [dict(info, channels=self._channels.get(i, info["channels"] if info["kind"] == "param" else None))
                  for i, info in enumerate(self.layer_info)]
        for i, k in self._forward_order.items():  # where the hooks ran (eager): the order the forward pass took
            layers[i]["forward"] = k
        filter_shapes = {n: tuple(filter_weight_shape(m)) for n, m in self.filter_modules if not is_sharded(m.weight)}
        return ShardLayout(rank=self.rank, world_size=self.world_size,
                           run_id=os.path.basename(os.path.abspath(self.run_dir)), layers=layers,
                           tables=[p.spec for p in self.param_probes + self.act_probes],
                           channel_widths=self._channel_widths(), filter_shapes=filter_shapes,
                           feature_map_shapes=self.probe.shapes if self.probe else {},
                           probe_inputs=self.probe.host_inputs() if self.probe else None,
                           probe_targets=self.probe.targets if self.probe else None)

    # -- host side: runs on the writer thread ---------------------------------------------
    def _finalize(self, item: dict) -> StepRecord:
        item["transfer"].finish()
        rec = StepRecord(step=item["step"], wall_time=item["wall_time"], scalars=dict(item["scalars"]))
        rec.scalars.update({k: float(np.asarray(v).reshape(-1)[0]) for k, v in item["device_scalars"].items()})
        for probe, parts in item["param"]:
            self._finalized(probe, rec, self.rows.param_row, parts)
        self._activation_rows(item, rec)
        snap = {**item["snapshot"], **item["kept"]}
        as32 = {k: v.astype(np.float32, copy=False) for k, v in snap.items()}  # float32 already: no copy
        rec.filters = {k.split("/", 1)[1]: v for k, v in as32.items() if k.startswith("filters/")}
        rec.feature_maps = {k.split("/", 1)[1]: v for k, v in as32.items() if k.startswith("feature_maps/")}
        rec.scalars["tview_writer_cpu"] = self._writer_cpu()
        return rec

    def _writer_cpu(self) -> float:
        """tview_writer_cpu (on the writer thread): its CPU seconds since the last record's finalize ended (this
        record's finalize, and the writes and flushes between)."""
        thread, now = threading.get_ident(), time.thread_time()
        last = self._writer_cpu_at[1] if self._writer_cpu_at and self._writer_cpu_at[0] == thread else 0.0
        self._writer_cpu_at = (thread, now)
        return now - last

    def _activation_rows(self, item: dict, rec: StepRecord) -> None:
        """The activation probes' rows: the step's batches joined in one (act.joined_batches), a probe with
        finalize_outputs finalizes every output at once, the calls of a layer called several times merged row by row
        first (per layer where they differ in width: act.MergePlan); otherwise per layer."""
        calls: dict[act.ActivationProbe, dict[int, list[dict]]] = {}
        for layer, _, results in item["act"]:
            for probe, parts in results:
                calls.setdefault(probe, {}).setdefault(layer, []).append(parts)
        batches = [(layers, row_start, act.unpacked_parts(results))
                   for layers, _, row_start, results in item["act_batches"]]
        joined, started = act.joined_batches(batches), {}
        for layers, row_start, results in [joined] if joined is not None else batches:
            plan = act.merge_plan(tuple(layers), tuple(row_start)) if joined is not None else None
            for probe, parts in results:
                per_layer = calls.setdefault(probe, {})
                if plan is not None and act.outputs_finalizer(probe) is not None:
                    started[probe] = (plan.layers, plan.row_start, plan.merged(probe, parts))
                for k, layer in enumerate(layers):
                    if probe not in started or plan.leftover[k]:
                        per_layer.setdefault(layer, []).append(act.output_parts(probe, parts, row_start, k))
        for probe, per_layer in calls.items():
            self._finalized(probe, rec, self._probe_row, per_layer, started.get(probe))

    def _probe_row(self, probe, per_layer: dict, batch: tuple | None):
        row = self.rows.batch_row(probe, *batch) if batch is not None else None
        return self.rows.activation_row(probe, per_layer, row)

    @staticmethod
    def _written(item: dict) -> None:
        """The writer is done with a queued step (written, failed or dropped): the weight copy it read is free."""
        if "lease" in item:
            item.pop("lease").give_back()

    def _finalized(self, probe, rec: StepRecord, make_row, *parts):
        """A probe's row in the record, make_row(probe, *parts); a probe whose finalize fails is said once and leaves
        no row."""
        try:
            row = make_row(probe, *parts)
        except Exception as exc:
            self._report(f"{probe.table} ({type(probe).__name__}, finalize)", exc)
            return
        if row is not None:
            rec.tables[probe.table] = row

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

    def _remove_hooks(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._forward_hooks.clear()
        self.clock.remove()
        if self._unguard is not None:  # no hook of tview's left to guard on
            self._unguard()

    def close(self) -> None:
        """Write what is queued, mark the shard closed cleanly, remove the hooks, keep the training step reached
        (a resumed Recorder continues from it). Idempotent. A write failure not yet raised by step() is raised here."""
        if self._closed:
            return
        self._closed = True
        _WRITING.pop(os.path.realpath(self.shard_path), None)
        self._set_act_probes(())
        self._remove_hooks()
        try:
            with open(self._resume_path, "w") as f:
                json.dump({"next_step": self._step}, f)
        except OSError:
            pass  # the shard's own error, if any, is raised below
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


_WRITING: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # shard -> the open Recorder writing it


def _refuse_shard_in_use(path: str, mode: str) -> None:
    """One writer per shard: a second Recorder of the same folder and rank (resume, overwrite, or two Recorders of
    one model into one folder) is refused while the first is open, not failed at its first write; so is resuming a
    shard that a reader of this process holds open (HDF5 opens a file once per process: read-only, it cannot be
    written)."""
    other = _WRITING.get(os.path.realpath(path))
    if other is not None:
        raise ConfigError(f"{path}: {other!r} of this process already writes this shard; close() it first (a "
                          f"second Recorder of the same model records into a folder of its own)")
    if mode == "resume" and os.path.exists(path) and _open_here(path):
        gc.collect()  # a Run dropped but not yet collected (in a reference cycle) closes its files when collected
        if _open_here(path):
            raise ConfigError(f"{path}: this process has the shard open for reading (tview.open_run): call the "
                              f"run's close() before resuming the recording into it")


def _open_here(path: str) -> bool:
    """Whether this process holds the HDF5 file at `path` open (h5py)."""
    import h5py
    real = os.path.realpath(path)
    names = [f.name for f in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)]
    return any(os.path.realpath(os.fsdecode(n)) == real for n in names)


def _first_tensor(value, depth: int = 0) -> torch.Tensor | None:
    """The first tensor in a forward's inputs (nested in tuples, lists and dicts up to 3 deep), or None."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items if depth < 4 else ():
        found = _first_tensor(item, depth + 1)
        if found is not None:
            return found
    return None


_CURRENT_GRAPH_TASK = getattr(torch._C, "_current_graph_task_id", None)


def _graph_task_id() -> int:
    """The autograd graph task running on this thread (-1 outside the backward pass)."""
    return _CURRENT_GRAPH_TASK() if _CURRENT_GRAPH_TASK is not None else -1


def _training(module: nn.Module) -> bool:
    """A training forward: the module in train mode and autograd on (a forward under torch.no_grad() or
    torch.inference_mode(), in train mode or not, is inference between the steps, not the step's)."""
    return module.training and torch.is_grad_enabled()


def _finite_on_host(output) -> bool:
    """True for a CPU tensor (outside the device code path) with no NaN or Inf."""
    return (isinstance(output, torch.Tensor) and host_shortcuts(output)
            and bool(torch.isfinite(output.detach()).all()))


HOST_BUFFER_KEPT = 4 << 20  # bytes of the CPU path's sample buffer kept from one recorded step to the next (a bigger
# one is made again at each step: memory held between steps, and glibc serves the same size again without faults)


@contextlib.contextmanager
def _grads_swapped(swaps: list[tuple[torch.Tensor, torch.Tensor | None]]):
    """Each parameter's .grad set to the one given while the block runs (None: left out), its own put back after."""
    before = [(p, p.grad) for p, _ in swaps]
    try:
        for p, g in swaps:
            p.grad = g
        yield
    finally:
        for p, g in before:
            p.grad = g


def _channels(output: torch.Tensor) -> int | None:
    return output.shape[1] if output.dim() >= 2 else None


def filter_weight_shape(m: nn.Module) -> tuple:
    w = m.weight
    return (w.shape[1], w.shape[0], *w.shape[2:]) if isinstance(m, nn.modules.conv._ConvTransposeNd) else tuple(w.shape)


def _close_at_exit(ref):
    rec = ref()
    if rec is not None and not rec._closed:
        try:
            rec.close()
        except TviewError as exc:
            warnings.warn(str(exc), RuntimeWarning, stacklevel=1)
