"""Lightning 2.x callback: `Trainer(callbacks=[TviewCallback("runs/exp1", every=10)])` records with tview.Recorder."""

from __future__ import annotations

import logging
import os
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"tview.integrations.lightning needs Lightning 2.x: pip install 'tview[lightning]' "
                      f"({exc})") from exc

import torch

from tview.errors import ConfigError, TviewError
from tview.hooks.recorder import Recorder
from tview.hooks.schedules import as_schedule, get_preset

log = logging.getLogger(__name__)

# what the callback takes from the trainer itself
_SUPPLIED = ("model", "run_dir", "optimizer", "rank", "world_size", "start_step")


class TviewCallback(pl.Callback):
    """Records a LightningModule's training into `run_dir`, one shard per rank (DDP included).

    Takes the model, the rank and world size, the learning rates and the step count from the
    trainer, the loss from what `training_step` returns. Any other keyword is a `tview.Recorder`
    argument (`preset`, `snapshot_every`, `probe_batch`, `mode`, `flush_seconds`, `config`, ...).

    - One recorder step per optimizer step: with `accumulate_grad_batches=k` the k micro-batches
      make one step, its loss the mean of theirs (the sum of the k scaled losses Lightning steps
      on), its example count their total. Steps count from `trainer.global_step` at the start (0,
      or where a resumed fit goes on). Manual optimization: one step per training batch that
      stepped an optimizer (however many), its loss what `training_step` returned.
    - Learning rates: the Recorder's own, from the trainer's optimizers: `lr`, `lr/1`, `lr/2`, ... over
      every param group of every optimizer in order, as each optimizer step used them (taken when the
      step begins, so a scheduler stepped by Lightning counts from the next step on).
    - The recorder is made in `on_train_start` (optimizers and restored step known) and closed
      in `teardown`, or in `on_exception`, so a failed fit leaves a closed, readable shard.
    - Resuming a fit from a checkpoint: pass `mode="resume"`; recording goes on at the restored
      `global_step`.
    """

    def __init__(self, run_dir: str | os.PathLike, every: Any = 10, **recorder_kwargs: Any):
        super().__init__()
        if not isinstance(run_dir, (str, os.PathLike)):
            raise ConfigError(f"TviewCallback: run_dir must be a path, got {type(run_dir).__name__}")
        supplied = sorted(set(recorder_kwargs) & set(_SUPPLIED))
        if supplied:
            raise ConfigError(f"TviewCallback: {', '.join(supplied)} come(s) from the trainer; do not pass them")
        as_schedule(every, "every")  # checked now, not at the first batch
        get_preset(recorder_kwargs.get("preset", "default"))
        self.run_dir = os.fspath(run_dir)
        self.every = every
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None
        self._losses: list[torch.Tensor] = []
        self._examples = 0
        self._last_global_step = 0

    # -- start ----------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None:
            return
        self.recorder = Recorder(pl_module, self.run_dir, self.every, optimizer=list(trainer.optimizers),
                                 rank=trainer.global_rank, world_size=trainer.world_size,
                                 start_step=trainer.global_step, **self.recorder_kwargs)
        self._last_global_step = trainer.global_step
        self._losses, self._examples = [], 0

    # -- every batch ----------------------------------------------------------------------

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.recorder is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())
        self._examples += _batch_size(batch)
        if trainer.global_step == self._last_global_step:  # accumulating: no optimizer step yet
            return
        self._last_global_step = trainer.global_step
        self.recorder.step(loss=self._step_loss(pl_module), batch_size=self._examples or None)
        self._losses, self._examples = [], 0

    def _step_loss(self, pl_module: pl.LightningModule) -> torch.Tensor | None:
        """The loss of the optimizer step just taken, from its micro-batches' outputs."""
        if not self._losses:
            return None
        total = self._losses[0] if len(self._losses) == 1 else torch.stack(self._losses).sum()
        if pl_module.automatic_optimization:  # Lightning returns each loss divided by accumulate_grad_batches
            return total
        return total / len(self._losses)

    # -- end ------------------------------------------------------------------------------
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        log.warning("tview: training stopped by %s: %s; closing %s", type(exception).__name__, exception,
                    self.run_dir)
        try:
            self._close()
        except TviewError as exc:  # the training's own exception goes on; this one is said, not raised
            log.error("tview: closing the recorder after %s failed: %s", type(exception).__name__, exc)

    def _close(self) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close()


def _batch_size(batch: Any) -> int:
    """Examples in a batch, as Lightning counts them: the length of its first tensor (0 when it has none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        size = _batch_size(item)
        if size:
            return size
    return 0
