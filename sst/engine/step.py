"""One optimizer step: LR, micro-batches (gradient accumulation under DDP's ``no_sync``),
mixed precision, the hooks around the optimizer, gradient clipping; and the window of train
losses since the last record."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sst import dist

from .evaluation import to_device
from .hooks import Hook, call_hooks
from .precision import Precision
from .settings import TrainerSettings


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite; no checkpoint is written from then on."""


class LossWindow:
    """The train loss summed over the steps since the last record, and whether any loss so
    far was NaN or infinite."""

    def __init__(self, device: torch.device) -> None:
        self.sum = torch.zeros((), device=device)
        self.steps = 0
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def add(self, loss: torch.Tensor, share: float) -> None:
        self.sum += loss * share
        self._nonfinite |= ~torch.isfinite(loss)

    def check_finite(self, step: int, saved_step: int | None) -> None:
        """Raises ``NonFiniteLoss`` if any rank saw a non-finite loss."""
        if not dist.any_rank(self._nonfinite):
            return
        if saved_step is not None:
            kept = f"the last good checkpoint (step {saved_step}) is kept"
        else:
            kept = "no checkpoint had been written yet"
        raise NonFiniteLoss(
            f"the training loss became NaN/inf before step {step}: stopping; {kept} "
            "(lower the learning rate or enable trainer.grad_clip)"
        )

    def mean_over_ranks(self) -> float:
        """The mean loss per step over the window and all ranks; empties the window."""
        mean = dist.all_reduce_sum(self.sum.clone()).item() / (self.steps * dist.world_size())
        self.sum.zero_()
        self.steps = 0
        return mean

    def share_of_ranks(self) -> None:
        """Before rank 0 saves: its window becomes every rank's share of the global one (the
        ranks' mean, so the logged mean does not change on resume)."""
        if dist.world_size() > 1:
            self.sum = dist.all_reduce_sum(self.sum.clone()) / dist.world_size()

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sum = state["sum"].to(self.sum.device)
        self.steps = state["steps"]


class TrainStep:
    """Takes one optimizer step over ``grad_accumulation`` micro-batches. ``model`` is what
    trains (the DDP wrapper in a multi-process run); ``hooks`` is the loop's list."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        hooks: Sequence[Hook],
        settings: TrainerSettings,
        precision: Precision,
        device: torch.device,
        losses: LossWindow,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.hooks = hooks
        self.settings = settings
        self.precision = precision
        self.device = device
        self.losses = losses
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def set_lr(self, factor: float) -> float:
        """Every param group's LR to ``initial_lr * factor``; returns the first group's."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def _micro_batch(self, inputs, targets) -> torch.Tensor:
        inputs, targets = to_device(inputs, targets, self.device, self.settings.channels_last)
        with self.precision.autocast():
            logits = self.model(inputs)
            loss = F.cross_entropy(
                logits.float(), targets, label_smoothing=self.settings.label_smoothing
            )
            for hook in self.hooks:
                loss = hook.loss(inputs, targets, logits, loss)
        self.precision.scaler.scale(loss / self.settings.grad_accumulation).backward()
        return loss.detach()

    def __call__(self, micro_batches: Iterator) -> None:
        accumulation = self.settings.grad_accumulation
        scaler = self.precision.scaler
        for micro in range(accumulation):
            inputs, targets = next(micro_batches)
            # DDP all-reduces the gradients once, in the last micro-batch's backward
            with dist.no_sync(self.model, skip=micro < accumulation - 1):
                loss = self._micro_batch(inputs, targets)
            self.losses.add(loss, 1.0 / accumulation)
        dist.average_gradients(self.model)  # before unscaling: every rank sees the same infs
        scaler.unscale_(self.optimizer)
        call_hooks(self.hooks, "before_optimizer_step")
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        call_hooks(self.hooks, "after_optimizer_step")
        self.losses.steps += 1
