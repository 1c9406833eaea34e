"""The training loop: closed, counted in optimizer steps, extended only through hooks.

A run is one or more stages (``sst.sparsity.stages``); each optimizer step takes the LR of
its stage's schedule, and the duties that run on a cadence (train records, evaluation,
checkpoints, preemption) live in ``sst.events``.

Under DDP (``sst.dist``) the loop trains the wrapped model (micro-batches before the last of
a step under ``no_sync``) and keeps the unwrapped one for checkpoints and evaluation; every
rank runs the same steps, rank 0 alone writes, test metrics and the logged train loss are
reduced over all ranks, and the ranks agree on a stop signal before acting on it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import checkpoint as ckpt
from . import dist
from .events import Boundary, Checkpointing, Evaluation, Preempted, Preemption, TrainRecords
from .hooks import Hook
from .runlog import RunLog, SilentRunLog
from .sparsity.layers import unwrap
from .sparsity.stages import Stage, check_stages, single_stage, stage_at

log = logging.getLogger(__name__)

AMP_MODES = ("none", "bf16", "fp16")


def stop_signals() -> list[int]:
    """The signals that make the loop save and stop: SIGTERM (preemption), SIGUSR1 (SLURM's
    time-limit warning) and, inside a submitit job, submitit's preemption signal (SIGUSR2
    unless ``SUBMITIT_PREEMPT_SIGNAL`` names another), whose own handler requeues the job:
    the loop hands the signal over to it once the checkpoint is saved
    (``Preempted.hand_over``)."""
    wanted = [signal.SIGTERM, getattr(signal, "SIGUSR1", None)]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        wanted.append(getattr(signal, f"SIG{name}", None))
    return list(dict.fromkeys(s for s in wanted if s is not None))


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite; no checkpoint is written from then on."""


@dataclass
class LoopSettings:
    epochs: int
    max_steps: int | None = None
    grad_accumulation: int = 1
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: str = "none"
    channels_last: bool = False
    log_every: int = 50
    eval_every_epochs: int = 1
    checkpoint_every_epochs: int = 1
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"trainer.epochs={self.epochs} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"trainer.max_steps={self.max_steps} must be >= 1 or null")
        if self.grad_accumulation < 1:
            raise ValueError(f"trainer.grad_accumulation={self.grad_accumulation} must be >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"trainer.label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"trainer.grad_clip={self.grad_clip} must be > 0 or null")
        if self.amp not in AMP_MODES:
            raise ValueError(f"trainer.amp={self.amp!r} is unknown: allowed values are {AMP_MODES}")
        for key in ("log_every", "eval_every_epochs", "checkpoint_every_epochs"):
            if getattr(self, key) < 1:
                raise ValueError(f"trainer.{key}={getattr(self, key)} must be >= 1")


def step_plan(batches_per_epoch: int, settings: LoopSettings) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) of a run."""
    per_epoch = batches_per_epoch // settings.grad_accumulation
    if per_epoch < 1:
        raise ValueError(
            f"an epoch has {batches_per_epoch} batches, fewer than trainer.grad_accumulation="
            f"{settings.grad_accumulation}: lower the batch size or the accumulation"
        )
    total = settings.epochs * per_epoch
    if settings.max_steps:
        total = min(total, settings.max_steps)
    return per_epoch, total


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device, num_classes: int, autocast, channels_last
) -> dict[str, float]:
    """Test loss, top-1 and (with more than 10 classes) top-5 accuracy in percent. Under
    DDP each rank evaluates its shard of the test set (every example once, no padding) and
    the sums and counts are all-reduced, so every rank returns the same metrics."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float32 if device.type == "mps" else torch.float64)
    loss_sum, correct1, correct5, total = sums.to(device).unbind()
    for inputs, targets in loader:
        inputs, targets = _to_device(inputs, targets, device, channels_last)
        with autocast():
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        top = logits.topk(min(5, num_classes), dim=1).indices
        hits = top == targets.unsqueeze(1)
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        total += targets.numel()
    model.train(was_training)
    loss, hits1, hits5, count = dist.all_reduce_sum(
        torch.stack([loss_sum, correct1, correct5, total])
    ).tolist()
    out = {"test/loss": loss / count, "test/acc": 100.0 * hits1 / count}
    if num_classes > 10:
        out["test/acc_top5"] = 100.0 * hits5 / count
    return out


def _to_device(inputs, targets, device, channels_last):
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets.to(device, non_blocking=True)


class Loop:
    """Trains ``model`` through ``stages`` (default: one stage of the trainer's steps).

    ``lr_multiplier(step)`` gives the LR factor of each param group's ``initial_lr`` at a
    step of the schedule; each stage says which schedule step a global step uses. The run
    folder holds ``checkpoints/last.pt``; ``fit`` resumes from it when present.
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
        settings: LoopSettings,
        device: torch.device,
        run_log: RunLog | SilentRunLog | None = None,
        run_dir: str | Path | None = None,
        hooks: Sequence[Hook] = (),
        run_info: dict[str, Any] | None = None,
        stages: Sequence[Stage] | None = None,
        model_meta: dict[str, Any] | None = None,
    ) -> None:
        self.model = model  # what trains: the DDP wrapper in a multi-process run
        self.module = unwrap(model)  # what is saved and evaluated
        self.optimizer = optimizer
        self.lr_multiplier = lr_multiplier
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.num_classes = num_classes
        self.settings = settings
        self.device = device
        self.run_log = run_log
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.hooks = list(hooks)
        self.run_info = run_info or {}
        self.model_meta = model_meta or {}
        self.steps_per_epoch, steps = step_plan(len(train_loader), settings)
        self.stages = list(stages) if stages is not None else single_stage(steps)
        check_stages(self.stages)
        self.total_steps = self.stages[-1].end
        self.events = [
            TrainRecords(settings.log_every),
            Evaluation(settings.eval_every_epochs),
            Checkpointing(settings.checkpoint_every_epochs),
            Preemption(),
        ]
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.amp)
        self.amp_dtype = amp_dtype if device.type in ("cuda", "cpu") else None
        if settings.amp == "fp16" and device.type != "cuda":
            raise ValueError("trainer.amp=fp16 needs a CUDA device; use bf16 or none")
        self.scaler = torch.amp.GradScaler("cuda", enabled=settings.amp == "fp16")
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.stage_started = -1  # index of the last stage whose start hooks ran
        self.stage_results: list[dict[str, Any]] = []
        self.best_acc = -math.inf
        self.last_eval: dict[str, float] = {}
        self.elapsed = 0.0
        self.stop_signal: int | None = None  # a stop signal this process received
        self._stop_vote = dist.StopVote()
        self._previous_handlers: dict[int, Any] = {}  # of the stop signals, during fit
        self.saved_step: int | None = None
        self._start = time.perf_counter()
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._loss_sum = torch.zeros((), device=device)  # train loss since the last record
        self._loss_steps = 0
        self._lr = 0.0
        self._progress: tqdm | None = None
        self._postfix: dict[str, str] = {}

    # ----------------------------------------------------------------- state
    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None

    @property
    def stage(self) -> Stage:
        """The stage of the step about to be taken."""
        return stage_at(self.stages, self.step)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the sparsity method's state sits under the top-level key
        ``sparsity``, what rebuilds the model under ``model_meta``."""
        hooks = {h.name: h.state_dict() for h in self.hooks}
        return {
            "model": self.module.state_dict(),
            "model_meta": self.model_meta,
            "sparsity": hooks.pop("sparsity", None),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "hooks": hooks,
            "rng": ckpt.rng_state(),
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "stage_started": self.stage_started,
            "stage_results": list(self.stage_results),
            "best_acc": self.best_acc,
            "last_eval": dict(self.last_eval),
            "elapsed": self.elapsed + time.perf_counter() - self._start,
            "loss_window": {"sum": self._loss_sum.clone(), "steps": self._loss_steps},
            "wandb_id": self.run_log.run_id if self.run_log else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        hooks = {"sparsity": state["sparsity"], **state["hooks"]}
        for hook in self.hooks:
            hook.load_state_dict(hooks[hook.name])
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.stage_started = state["stage_started"]
        self.stage_results = list(state["stage_results"])
        self.best_acc = state["best_acc"]
        self.last_eval = dict(state["last_eval"])
        self.elapsed = state["elapsed"]
        self._loss_sum = state["loss_window"]["sum"].to(self.device)
        self._loss_steps = state["loss_window"]["steps"]

    def save_checkpoint(self) -> None:
        """Saves unless a non-finite loss was seen: the last good checkpoint stays."""
        self._check_finite()
        if dist.world_size() > 1:
            # rank 0 saves: its loss window becomes every rank's share of the global one
            # (the share of each is the ranks' mean, so the logged mean does not change)
            self._loss_sum = dist.all_reduce_sum(self._loss_sum.clone()) / dist.world_size()
        if self.checkpoint_path is not None and dist.is_main():
            ckpt.save_atomic(self.state_dict(), self.checkpoint_path)
        self.saved_step = self.step
        dist.barrier()

    def _check_finite(self) -> None:
        if dist.any_rank(self._nonfinite):
            if self.saved_step is not None and self.checkpoint_path is not None:
                kept = f"the last good checkpoint (step {self.saved_step}) is kept"
            else:
                kept = "no checkpoint had been written yet"
            raise NonFiniteLoss(
                f"the training loss became NaN/inf before step {self.step}: stopping; {kept} "
                "(lower the learning rate or enable trainer.grad_clip)"
            )

    def resume(self) -> bool:
        """Loads the newest readable checkpoint (``last.pt``, else ``prev.pt``) if the run
        folder has one, and brings the run's records back to its step."""
        if self.checkpoint_path is None:
            return False
        found = ckpt.load_latest(self.checkpoint_path)
        if found is None:
            return False
        state, path = found
        # RNG states must stay CPU tensors; model and optimizer copy to their devices
        self.load_state_dict(state)
        self.saved_step = self.step
        if self.run_log is not None and dist.is_main():
            self.run_log.resume_at(self.step)
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)
        return True

    # ----------------------------------------------------------------- signals
    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum

    def stop_requested(self) -> int | None:
        """After a step: the stop signal every rank agrees on (one step after the first rank
        received it, under DDP; at once in a single process), else None."""
        return self._stop_vote.poll(self.stop_signal)

    @contextlib.contextmanager
    def _signal_handlers(self):
        previous = {}
        try:
            for sig in stop_signals():
                with contextlib.suppress(ValueError):  # not the main thread
                    previous[sig] = signal.signal(sig, self._on_signal)
            self._previous_handlers = dict(previous)
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def previous_handler(self, signum: int) -> Callable | None:
        """The handler of ``signum`` before the loop took it over, if it was a function
        (submitit's requeue), else None."""
        handler = self._previous_handlers.get(signum)
        return handler if callable(handler) else None

    # ----------------------------------------------------------------- one training step
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _set_lr(self) -> float:
        factor = self.lr_multiplier(self.stage.schedule_step(self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def _micro_batch(self, inputs, targets) -> torch.Tensor:
        inputs, targets = _to_device(inputs, targets, self.device, self.settings.channels_last)
        with self._autocast():
            logits = self.model(inputs)
            loss = F.cross_entropy(
                logits.float(), targets, label_smoothing=self.settings.label_smoothing
            )
            for hook in self.hooks:
                loss = hook.loss(inputs, targets, logits, loss)
        self.scaler.scale(loss / self.settings.grad_accumulation).backward()
        return loss.detach()

    def train_step(self, micro_batches) -> None:
        """One optimizer step over ``grad_accumulation`` micro-batches."""
        accumulation = self.settings.grad_accumulation
        self._lr = self._set_lr()
        for micro in range(accumulation):
            inputs, targets = next(micro_batches)
            # DDP all-reduces the gradients once, in the last micro-batch's backward
            with dist.no_sync(self.model, skip=micro < accumulation - 1):
                loss = self._micro_batch(inputs, targets)
            self._loss_sum += loss / accumulation
            self._nonfinite |= ~torch.isfinite(loss)
        self.scaler.unscale_(self.optimizer)
        for hook in self.hooks:
            hook.before_optimizer_step()
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        for hook in self.hooks:
            hook.after_optimizer_step()
        self.step += 1
        self.step_in_epoch += 1
        self._loss_steps += 1

    # ----------------------------------------------------------------- records
    def _log(self, metrics: dict[str, float]) -> None:
        if self.run_log is not None and dist.is_main():
            epoch = self.epoch + self.step_in_epoch / self.steps_per_epoch
            self.run_log.log(metrics, step=self.step, epoch=round(epoch, 4))

    def _hook_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for hook in self.hooks:
            out.update(hook.metrics())
        return out

    def _stage_fields(self) -> dict[str, float]:
        return {"stage": self.stage_at_last_step().index} if len(self.stages) > 1 else {}

    def stage_at_last_step(self) -> Stage:
        """The stage of the step just taken; once a last stage without steps has started,
        that stage."""
        last = self.stages[-1]
        if last.steps == 0 and self.stage_started >= last.index:
            return last
        return stage_at(self.stages, max(self.step - 1, 0))

    def record_train(self) -> None:
        """Mean train loss since the last record (over all ranks), the LR, and the hooks'
        metrics."""
        self._check_finite()
        mean_loss = dist.all_reduce_sum(self._loss_sum.clone()).item() / (
            self._loss_steps * dist.world_size()
        )
        self._postfix["loss"] = f"{mean_loss:.4f}"
        self._postfix["lr"] = f"{self._lr:.3g}"
        if self._progress is not None:
            self._progress.set_postfix(self._postfix, refresh=False)
        record = {"train/loss": mean_loss, "train/lr": self._lr, **self._stage_fields()}
        for hook in self.hooks:
            record.update(hook.train_metrics())
        self._log({**record, **self._hook_metrics()})
        self._loss_sum.zero_()
        self._loss_steps = 0

    def evaluate_and_record(self, stage_end: bool = False) -> None:
        """Test metrics now; at a stage's end also a row of ``stage_results``."""
        dist.broadcast_buffers(self.module)  # every rank evaluates rank 0's model
        self.last_eval = evaluate(
            self.module,
            self.test_loader,
            self.device,
            self.num_classes,
            self._autocast,
            self.settings.channels_last,
        )
        self.best_acc = max(self.best_acc, self.last_eval["test/acc"])
        metrics = self._hook_metrics()
        self._log(
            {**self.last_eval, "test/best_acc": self.best_acc, **self._stage_fields(), **metrics}
        )
        if stage_end and len(self.stages) > 1:
            stage = self.stage_at_last_step()
            row = {
                "stage": stage.index,
                "step": self.step,
                "test_acc": self.last_eval["test/acc"],
                "sparsity_masked_layers": metrics.get("sparsity/masked_layers"),
            }
            if stage.label:
                row["label"] = stage.label
            self.stage_results.append(row)
        self._postfix["test_acc"] = f"{self.last_eval['test/acc']:.2f}"
        if self._progress is not None:
            self._progress.set_postfix(self._postfix)
        log.info("epoch %d step %d: %s", self.epoch, self.step, _short(self.last_eval))

    # ----------------------------------------------------------------- the run
    def _micro_batches(self) -> Iterator:
        """Micro-batches from the current position on, epoch after epoch."""
        accumulation = self.settings.grad_accumulation
        while True:
            self.train_loader.set_epoch(self.epoch, skip_batches=self.step_in_epoch * accumulation)
            if self._progress is not None:
                self._progress.set_description(f"epoch {self.epoch + 1}/{self._total_epochs()}")
            epoch = self.epoch
            for batch in self.train_loader:
                yield batch
                if self.epoch != epoch:  # the epoch closed early (a stage ended)
                    break

    def _total_epochs(self) -> int:
        return sum(math.ceil(s.steps / self.steps_per_epoch) for s in self.stages)

    def _start_stage_if_due(self) -> None:
        stage = self.stage
        if self.stage_started < stage.index:
            for hook in self.hooks:
                hook.on_stage_start(stage)
            self.stage_started = stage.index

    def _boundary(self) -> Boundary:
        """What the step just taken closed; an epoch closes at the end of its batches and
        at the end of every stage."""
        stage_end = self.step == self.stage_at_last_step().end
        run_end = self.step >= self.total_steps
        epoch_end = self.step_in_epoch >= self.steps_per_epoch or stage_end or run_end
        return Boundary(epoch=epoch_end, stage=stage_end, run=run_end)

    def fit(self) -> dict[str, Any]:
        """Trains to the end and returns the summary (also written to ``summary.json``)."""
        self._start = time.perf_counter()
        self.resume()
        dist.check_same("the step to start from", self.step)
        self.model.train()
        self._progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (self.settings.progress_bar and dist.is_main()),
        )
        try:
            with self._signal_handlers():
                micro_batches = self._micro_batches()
                while self.step < self.total_steps:
                    self._start_stage_if_due()
                    self.train_step(micro_batches)
                    self._progress.update()
                    boundary = self._boundary()
                    if boundary.epoch:
                        for hook in self.hooks:
                            hook.on_epoch_end(self.epoch)
                        self.epoch += 1
                        self.step_in_epoch = 0
                    for event in self.events:
                        event.after_step(self, boundary)
                self._run_stage_without_steps()
            self._stop_vote.close()
        except Preempted:
            self._stop_vote.close()  # every rank stopped at this step: its vote completes
            raise
        finally:
            self._progress.close()
            self._progress = None
        return self._summary()

    def _run_stage_without_steps(self) -> None:
        """A last stage with no steps starts after the last step (its hooks may change the
        model, e.g. a final prune) and ends at once: evaluated and checkpointed like any
        stage end."""
        last = self.stages[-1]
        if last.steps == 0 and self.stage_started < last.index:
            self._start_stage_if_due()
            self.evaluate_and_record(stage_end=True)
            self.save_checkpoint()

    def _summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            **self.run_info,
            "finished": True,
            "steps": self.step,
            "epochs": self.epoch,
            "final_test_acc": self.last_eval.get("test/acc"),
            "best_test_acc": self.best_acc if math.isfinite(self.best_acc) else None,
            "final_test_loss": self.last_eval.get("test/loss"),
            "wall_time_s": self.elapsed + time.perf_counter() - self._start,
        }
        if "test/acc_top5" in self.last_eval:
            summary["final_test_acc_top5"] = self.last_eval["test/acc_top5"]
        if len(self.stages) > 1:
            summary["stages"] = list(self.stage_results)
            for row in self.stage_results:
                if row.get("label"):
                    summary[f"test_acc_{row['label']}"] = row["test_acc"]
        for hook in self.hooks:
            summary.update(hook.summary())
        return summary


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
