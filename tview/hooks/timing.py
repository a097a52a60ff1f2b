"""What a step's timeline and optimizers tell the Recorder: the learning rates a step used, each rank's own work,
its wait for the others (optimizer step hooks) and for a CPU, and this rank's gradients before the DDP all-reduce
(a DDP communication hook that sees each bucket's flat local gradient)."""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from tview.errors import ConfigError
from tview.hooks.foreach import foreach_powsum
from tview.hooks.probes import one_tensor
from tview.hooks.scalars import cpu_wait_seconds
from tview.hooks.transfer import PerBlock


def as_optimizers(optimizer) -> list:
    """None, one optimizer or a list/tuple of them, as a list; anything else is refused."""
    if optimizer is None:
        return []
    opts = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    bad = [type(o).__name__ for o in opts if not isinstance(o, torch.optim.Optimizer)]
    if bad:
        raise ConfigError(f"optimizer must be a torch.optim.Optimizer or a list of them, got {bad}")
    return opts


def lr_names(optimizers: list) -> list[str]:
    """'lr' for the first parameter group of the first optimizer, then 'lr/1', 'lr/2', ... in order."""
    return lr_names_of(sum(len(o.param_groups) for o in optimizers))


def lr_names_of(n: int) -> list[str]:
    return ["lr" if i == 0 else f"lr/{i}" for i in range(n)]


class StepClock:
    """Optimizer step hooks: the learning rates when the step began (a scheduler stepped after it does not
    change them), when the first optimizer began stepping and when the last one ended. With no optimizer
    given, global optimizer hooks watch any optimizer of the model's parameters."""

    def __init__(self, optimizers: list, params: list[torch.Tensor]):
        self.optimizers = optimizers
        self.lrs: list | None = None
        self.t_opt_start: float | None = None
        self.t_opt_end: float | None = None
        self.cpu_wait_start = cpu_wait_seconds()
        self._param_ids = {id(p) for p in params}
        self._seen: list = []
        self._seen_lrs: list = []
        self.grads_of: list[torch.Tensor] | None = None  # on a recorded step: the parameters whose gradients
        self.kept_grads: list | None = None  # the post hook keeps, [(grad or None, its version)] at optimizer.step()
        if optimizers:
            self.handles = [h for o in optimizers for h in (o.register_step_pre_hook(self._pre),
                                                             o.register_step_post_hook(self._post))]
        else:
            from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
            self.handles = [register_optimizer_step_pre_hook(self._pre_any),
                            register_optimizer_step_post_hook(self._post_any)]

    def follow(self, params: list[torch.Tensor]) -> None:
        """The model's parameters are now these (replaced): an optimizer of theirs is the model's."""
        self._param_ids = {id(p) for p in params}

    def _ours(self, opt) -> bool:
        return any(id(p) in self._param_ids for g in opt.param_groups for p in g["params"][:1])

    def _pre_any(self, opt, args, kwargs):
        if self._ours(opt):
            self._pre(opt, args, kwargs)
            if all(o is not opt for o in self._seen):  # no optimizer given: the ones seen stepping, in order
                self._seen.append(opt)
                self._seen_lrs += [g.get("lr", float("nan")) for g in opt.param_groups]

    def _post_any(self, opt, args, kwargs):
        if self._ours(opt):
            self._post(opt, args, kwargs)

    def _pre(self, opt, args, kwargs):
        if self.t_opt_start is None:
            self.t_opt_start = time.perf_counter()
        if self.optimizers and opt is self.optimizers[0]:
            self.lrs = [g.get("lr", float("nan")) for o in self.optimizers for g in o.param_groups]

    def _post(self, opt, args, kwargs):
        self.t_opt_end = time.perf_counter()
        if self.grads_of is not None:  # a zero_grad() before the Recorder's step() leaves them readable
            self.kept_grads = [(g, g._version if g is not None else 0) for g in (p.grad for p in self.grads_of)]

    def reset(self, recording: bool = True) -> None:
        """A step begins; `recording`: it is recorded (its wait for a CPU is read from here; else not read)."""
        self.t_opt_start = self.t_opt_end = None
        self.kept_grads = None
        self.cpu_wait_start = cpu_wait_seconds() if recording else None
        self.lrs = None
        self._seen, self._seen_lrs = [], []

    def cpu_wait_time(self) -> dict:
        """{"cpu_wait_time": seconds this thread waited for a CPU since the last reset (the step's start)}, or {}
        where the kernel does not say."""
        now = cpu_wait_seconds()
        if now is None or self.cpu_wait_start is None:
            return {}
        return {"cpu_wait_time": now - self.cpu_wait_start}

    def current_lrs(self) -> list:
        """The learning rates the step used (read at its optimizer's pre-hook), else the current ones; with no
        optimizer given, those of the optimizers seen stepping the model's parameters this step."""
        if not self.optimizers:
            return list(self._seen_lrs)
        if self.lrs is not None:
            return self.lrs
        return [g.get("lr", float("nan")) for o in self.optimizers for g in o.param_groups]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _bucket_views(bucket, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each parameter's gradient in a DDP bucket, as views of its flat buffer (bucket.gradients() copies them)."""
    buf = bucket.buffer()
    sizes = [p.numel() for p in params]
    if sum(sizes) != buf.numel():  # a layout with gaps: let DDP cut it
        return bucket.gradients()
    return list(torch.split(buf, sizes))


def unreduced_grads(params: list[torch.Tensor], reduced: dict[int, torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
    """(position, .grad) of the parameters outside DDP's buckets (`reduced`: ddp_reduced's) that have a gradient:
    this rank's own, never all-reduced."""
    return [(k, p.grad) for k, p in enumerate(params) if id(p) not in reduced and p.grad is not None]


def ddp_reduced(ddp: torch.nn.parallel.DistributedDataParallel) -> dict[int, torch.Tensor]:
    """id -> parameter of the model's parameters now, taken as those DDP all-reduces (it reduces those it was made
    with; one replaced later never reaches it); held, so that their ids stay theirs."""
    return {id(p): p for p in ddp.module.parameters()}


def live_scale(scaler) -> torch.Tensor | None:
    """The scale a GradScaler multiplies the loss by now (its device tensor, read as the backward runs: scaler.update()
    changes it after), or None (no scaler, disabled, or before its first scale())."""
    if scaler is None or not scaler.is_enabled():
        return None
    return getattr(scaler, "_scale", None)


def check_scaler(scaler):
    """A torch.amp.GradScaler (or None), else a ConfigError naming what came."""
    if scaler is not None and not (callable(getattr(scaler, "is_enabled", None)) and hasattr(scaler, "_scale")):
        raise ConfigError(f"scaler must be the torch.amp.GradScaler that scales the loss, got {type(scaler).__name__}")
    return scaler


class LocalGrads:
    """This rank's gradient before the DDP all-reduce, as squared norms per parameter tensor, from a DDP
    communication hook: one multi-tensor norm per bucket (a few per step, whatever the layer count), no copy
    of a gradient, no hook on a parameter (frozen ones never reach a bucket). It then all-reduces the bucket
    exactly as DDP's default hook does. `t_last` is when the last bucket was ready: this rank's own work."""

    def __init__(self, ddp: torch.nn.parallel.DistributedDataParallel, params: list[torch.Tensor], scaler=None,
                 failed=None):
        self.active = False  # the step records (set by the Recorder each step)
        self.failed = failed  # called with the exception where taking the norms failed: they stop for good
        self.off = False
        self.scaler = scaler  # a GradScaler: the bucket holds the scaled gradient, divided by the scale here
        self.parts: list[tuple[list[int], torch.Tensor]] = []
        self.t_last: float | None = None
        self.own = 0.0  # seconds in the hook's norms since the Recorder last took them (its tview_time)
        self._reduced = ddp_reduced(ddp)
        self.follow(params)
        ddp.register_comm_hook(state=None, hook=self._hook)
        self._group = ddp.process_group

    def follow(self, params: list[torch.Tensor]) -> None:
        """The recorded parameters are now these (some replaced mid-run): positions by the new ones (a replaced
        one, still in DDP's bucket, is no longer read: its stale gradient); a new one never reaches a bucket (DDP
        reduces those it was made with), its .grad is this rank's own, read in take()."""
        self.params = params
        self.index = {id(p): k for k, p in enumerate(params)}
        self.n = len(params)

    def _hook(self, state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        self.t_last = time.perf_counter()
        if self.active and not self.off:
            try:
                self._take_norms(bucket)
            except Exception as exc:  # never the all-reduce, never training: the local norms stop, said once
                self._fail(exc)
            self.own += time.perf_counter() - self.t_last
        return allreduce_hook(self._group, bucket)

    def _take_norms(self, bucket) -> None:
        params = bucket.parameters()
        grads = _bucket_views(bucket, params)
        if grads:
            sq = squared_norms(grads)
            scale = live_scale(self.scaler)
            positions = [self.index.get(id(p), -1) for p in params]
            self.parts.append((positions, sq if scale is None else sq.div(scale.square())))

    def take(self) -> PerBlock | None:
        """[parameter tensors] squared local norms of this step (NaN where a tensor had no gradient), or None: the
        buckets' norms as they are, in the step's transfer (no op), put in the parameters' order on the host."""
        parts, self.parts = self.parts, []
        if self.off:
            return None
        try:
            parts += self._unreduced_parts()
        except Exception as exc:  # the step's other statistics are recorded
            self._fail(exc)
            return None
        return squares_in_order(parts, self.n) if parts else None

    def _fail(self, exc: BaseException) -> None:
        self.parts, self.off = [], True
        if self.failed is not None:
            self.failed(exc)

    def _unreduced_parts(self) -> list[tuple[list[int], torch.Tensor]]:
        """(positions, squared norms) of the gradients of parameters outside DDP's buckets (replaced mid-run)."""
        have = unreduced_grads(self.params, self._reduced)
        if not have:
            return []
        return [([k for k, _ in have], squared_norms([g.detach() for _, g in have]))]


def squared_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[tensors] float32 squared norms: one multi-tensor op (and a stack where its results are not one buffer)."""
    return one_tensor(foreach_powsum(tensors))


def squares_in_order(parts: list[tuple[list[int], torch.Tensor]], n: int) -> PerBlock:
    """[n] squared local norms from (positions, squared norms) parts, as they go to the host: the parts' tensors
    travel as they are in the step's transfer (no op), put in the parameters' order there (NaN where none)."""
    ids = np.array([k for idx, _ in parts for k in idx], dtype=np.int64)
    return PerBlock([v for _, v in parts], functools.partial(_in_order, ids=ids, n=n))


def _in_order(values: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Host side: [n] values at positions `ids` (-1: a parameter not recorded, dropped), NaN elsewhere."""
    out = np.full(n, np.nan)
    keep = ids >= 0
    out[ids[keep]] = values[keep]
    return out
