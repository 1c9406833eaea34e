"""The training loop: closed, counted in optimizer steps, extended only through hooks.

A run is one or more stages (``sst.sparsity.stages``); each optimizer step takes the LR of
its stage's schedule. The loop holds the position (step, epoch, stage) and calls the small
objects it owns, none of which calls it back: the train step (``step``), the records
(``records``), the checkpointer, the stop signals (``signals``); ``cadence`` says when each
periodic duty is due.

Under DDP (``sst.dist``) the loop trains the wrapped model and keeps the unwrapped one for
checkpoints and evaluation; every rank runs the same steps, rank 0 alone writes, test
metrics and the logged train loss are reduced over all ranks, and the ranks agree on a stop
signal before acting on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sst import dist
from sst.runs.folder import RunFolder
from sst.runs.runlog import RunLog, SilentRunLog
from sst.sparsity.layers import unwrap
from sst.sparsity.stages import Stage

from . import cadence, rng
from .checkpointer import Checkpointer
from .evaluation import evaluate
from .hooks import Hook, call_hooks
from .position import Position
from .precision import Precision
from .records import Records
from .settings import TrainerSettings
from .signals import Preempted, StopSignals
from .step import LossWindow, TrainStep

log = logging.getLogger(__name__)


class Loop:
    """Trains ``model`` through ``stages`` of ``steps_per_epoch`` optimizer steps an epoch.

    ``lr_multiplier(step)`` gives the LR factor of each param group's ``initial_lr`` at a step of
    the schedule; each stage says which schedule step a global step uses. With a ``run_dir``
    the loop checkpoints to its ``checkpoints/last.pt`` and ``fit`` resumes from it.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_multiplier: Callable[[int], float],
        train_loader,
        test_loader,
        num_classes: int,
        settings: TrainerSettings,
        device: torch.device,
        steps_per_epoch: int,
        stages: Sequence[Stage],
        precision: Precision | None = None,
        run_log: RunLog | SilentRunLog | None = None,
        run_dir: str | Path | None = None,
        hooks: Sequence[Hook] = (),
        run_info: dict[str, Any] | None = None,
        model_meta: dict[str, Any] | None = None,
    ) -> None:
        self.model = model  # what trains: the DDP wrapper in a multi-process run
        self.module = unwrap(model)  # what is saved and evaluated
        self.optimizer = optimizer
        self.lr_multiplier = lr_multiplier
        self.train_loader, self.test_loader = train_loader, test_loader
        self.num_classes = num_classes
        self.settings = settings
        self.device = device
        self.position = Position(list(stages), steps_per_epoch)
        self.hooks = list(hooks)
        self.run_info = run_info or {}
        self.model_meta = model_meta or {}
        self.precision = precision or Precision(settings.amp, device)
        self.losses = LossWindow(device)
        self.train_step = TrainStep(
            model, optimizer, self.hooks, settings, self.precision, device, self.losses
        )
        self.run_log = run_log
        self.records = Records(run_log, settings.progress_bar)
        folder = RunFolder(run_dir).checkpoint_path if run_dir is not None else None
        self.checkpointer = Checkpointer(folder)
        self.signals = StopSignals()
        self.elapsed = 0.0  # seconds trained by earlier launches of the run
        self._start = time.perf_counter()
        self._lr = 0.0

    @property
    def step(self) -> int:  # optimizer steps taken
        return self.position.step

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the sparsity method's state sits under the top-level key
        ``sparsity``, what rebuilds the model under ``model_meta``."""
        call_hooks(self.hooks, "before_save")
        hooks = {h.name: h.state_dict() for h in self.hooks if h.has_state}
        return {
            "model": self.module.state_dict(),
            "model_meta": self.model_meta,
            "sparsity": hooks.pop("sparsity", None),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.state_dict(),
            "hooks": hooks,
            "rng": rng.rng_state(),
            **self.position.state_dict(),
            **self.records.state_dict(),
            "elapsed": self.elapsed + time.perf_counter() - self._start,
            "loss_window": self.losses.state_dict(),
            "wandb_id": self.run_log.run_id if self.run_log else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state["scaler"])
        hooks = {"sparsity": state["sparsity"], **state["hooks"]}
        for hook in (h for h in self.hooks if h.has_state):
            hook.load_state_dict(hooks[hook.name])
        rng.set_rng_state(state["rng"])  # RNG states stay CPU tensors
        self.position.load_state_dict(state)
        self.records.load_state_dict(state)
        self.elapsed = state["elapsed"]
        self.losses.load_state_dict(state["loss_window"])

    def save_checkpoint(self) -> None:
        """Saves unless a non-finite loss was seen: the last good checkpoint stays."""
        self.losses.check_finite(self.step, self.checkpointer.saved_step)
        self.losses.share_of_ranks()
        self.checkpointer.save(self.state_dict(), self.step)

    def resume(self) -> bool:
        """Loads the newest readable checkpoint (``last.pt``, else ``prev.pt``) if the run
        folder has one, and brings the run's records back to its step (to none without a
        checkpoint: a kill before the first one leaves records the new start logs again)."""
        found = self.checkpointer.load()
        if found is not None:
            self.load_state_dict(found[0])
            self.checkpointer.saved_step = self.step
        if self.run_log is not None and dist.is_main():  # records past the start go
            self.run_log.resume_at(self.step)
        if found is None:
            return False
        log.info("resumed from %s at step %d (epoch %d)", found[1], self.step, self.position.epoch)
        return True

    # ----------------------------------------------------------------- records
    def _hook_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for hook in self.hooks:
            out.update(hook.metrics())
        return out

    def record_train(self) -> None:
        """Mean train loss since the last record (over all ranks), LR and hooks' metrics."""
        self.losses.check_finite(self.step, self.checkpointer.saved_step)
        record = {"train/loss": self.losses.mean_over_ranks(), "train/lr": self._lr}
        record.update(self.position.stage_fields())
        for hook in self.hooks:
            record.update(hook.train_metrics())
        record.update(self._hook_metrics())
        self.records.train(record, step=self.step, epoch=self.position.epoch_float())

    def evaluate_and_record(self, stage_end: bool = False) -> None:
        """Test metrics now; at a stage's end of a multi-stage run also its row."""
        dist.broadcast_buffers(self.module)  # every rank evaluates rank 0's model
        metrics = evaluate(
            self.module,
            self.test_loader,
            self.device,
            self.num_classes,
            self.precision.autocast,
            self.settings.channels_last,
        )
        hooks = self._hook_metrics()
        extra = {**self.position.stage_fields(), **hooks}
        self.records.evaluation(metrics, extra, step=self.step, epoch=self.position.epoch_float())
        if stage_end and len(self.position.stages) > 1:
            stage = self.position.stage_at_last_step()
            masked = hooks.get("sparsity/masked_layers")
            self.records.stage_end(stage.index, stage.label, self.step, masked)

    # ----------------------------------------------------------------- the run
    def _micro_batches(self) -> Iterator:
        """Micro-batches from the current position on, epoch after epoch."""
        position = self.position
        while True:
            skip = position.step_in_epoch * self.settings.grad_accumulation
            self.train_loader.set_epoch(position.epoch, skip_batches=skip)
            self.records.describe_epoch(position.epoch, position.total_epochs())
            epoch = position.epoch
            for batch in self.train_loader:
                yield batch
                if position.epoch != epoch:  # the epoch closed early (a stage ended)
                    break

    def _start_stage_if_due(self) -> None:
        stage = self.position.stage
        if self.position.stage_started < stage.index:
            call_hooks(self.hooks, "on_stage_start", stage)
            self.position.stage_started = stage.index

    def _one_step(self, micro_batches: Iterator) -> None:
        """A step and the duties it makes due (``sst.engine.cadence``)."""
        position, settings = self.position, self.settings
        self._start_stage_if_due()
        factor = self.lr_multiplier(position.stage.schedule_step(position.step))
        self._lr = self.train_step.set_lr(factor)
        call_hooks(self.hooks, "on_step_start", position.step + 1)
        self.train_step(micro_batches)
        boundary = position.advance()
        self.records.advance()
        if boundary.epoch:
            call_hooks(self.hooks, "on_epoch_end", position.epoch)
            position.close_epoch()
        if cadence.train_record_due(position.step, settings.log_every):
            self.record_train()
        if cadence.epoch_duty_due(boundary, position.epoch, settings.eval_every_epochs):
            self.evaluate_and_record(stage_end=boundary.stage)
        if cadence.epoch_duty_due(boundary, position.epoch, settings.checkpoint_every_epochs):
            self.save_checkpoint()
        self._stop_if_signalled()

    def _stop_if_signalled(self) -> None:
        """A stop signal every rank agrees on: save (unless this step was just saved), then
        raise ``Preempted``."""
        signum = self.signals.agreed()
        if signum is None:
            return
        if self.checkpointer.saved_step != self.step:
            self.save_checkpoint()
        raise Preempted(
            f"signal {signum}: checkpoint saved at step {self.step}",
            signum,
            self.signals.previous_handler(signum),
        )

    def fit(self) -> dict[str, Any]:
        """Trains to the end and returns the summary (the caller writes it)."""
        self._start = time.perf_counter()
        self.resume()
        dist.check_same("the step to start from", self.step)
        self.model.train()
        self.records.open_progress(self.position.total_steps, self.step)
        try:
            with self.signals.installed():
                micro_batches = self._micro_batches()
                while self.step < self.position.total_steps:
                    self._one_step(micro_batches)
                self._run_stage_without_steps()
            self.signals.close()
        except Preempted:
            self.signals.close()  # every rank stopped at this step: its vote completes
            raise
        finally:
            self.records.close_progress()
        return self._summary()

    def _run_stage_without_steps(self) -> None:
        """A last stage with no steps starts after the last step (its hooks may change the
        model, e.g. a final prune) and ends at once: evaluated and checkpointed like any
        stage end."""
        last = self.position.stages[-1]
        if last.steps == 0 and self.position.stage_started < last.index:
            self._start_stage_if_due()
            self.evaluate_and_record(stage_end=True)
            self.save_checkpoint()

    def _summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            **self.run_info,
            "finished": True,
            "steps": self.step,
            "epochs": self.position.epoch,
            **self.records.results(multi_stage=len(self.position.stages) > 1),
            "wall_time_s": self.elapsed + time.perf_counter() - self._start,
        }
        for hook in self.hooks:
            summary.update(hook.summary())
        return summary
