"""The loop's extension points. Sparsity methods and distillation plug in here; the loop
itself has no method-specific branch."""

from __future__ import annotations

from typing import Any

import torch

from sst.sparsity.stages import Stage


class Hook:
    """Every method is optional. Calls come in this order for each optimizer step:
    ``loss`` (per micro-batch) -> backward -> ``before_optimizer_step`` (gradients are
    accumulated and unscaled, not yet clipped) -> optimizer step -> ``after_optimizer_step``.
    ``on_stage_start`` comes before the first step of each training stage, ``on_epoch_end``
    after the last step of each epoch.
    """

    name = "hook"

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        return loss

    def before_optimizer_step(self) -> None:
        pass

    def after_optimizer_step(self) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def on_stage_start(self, stage: Stage) -> None:
        """Before the first optimizer step of every stage (``sst.sparsity.stages``)."""

    def metrics(self) -> dict[str, float]:
        return {}

    def train_metrics(self) -> dict[str, float]:
        """Added to the train records only: running means of the steps since the last
        train record (the loop's train loss is windowed the same way)."""
        return {}

    def summary(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class SparsityHook(Hook):
    """Drives a ``sst.sparsity`` method from the loop; under DDP it also checks that the
    ranks hold the same masks when a stage starts and after a resume."""

    name = "sparsity"

    def __init__(self, method) -> None:
        self.method = method

    def before_optimizer_step(self) -> None:
        self.method.before_step()

    def after_optimizer_step(self) -> None:
        self.method.after_step()

    def on_stage_start(self, stage: Stage) -> None:
        self.method.on_stage_start(stage)
        self._verify_ranks()

    def metrics(self) -> dict[str, float]:
        return self.method.metrics()

    def summary(self) -> dict[str, Any]:
        metrics = self.method.metrics()
        return {
            "sparsity_masked_layers": metrics["sparsity/masked_layers"],
            "sparsity_all_params": metrics["sparsity/all_params"],
            "inference_flops_rel": metrics.get("flops/inference_rel"),
            "train_flops_rel": metrics.get("flops/train_rel"),
            "itop_rate": metrics.get("itop_rate"),
            "layers": self.method.layer_stats(),
        }

    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state)
        self._verify_ranks()

    def _verify_ranks(self) -> None:
        """Under DDP: every rank starts (a stage, or a resumed run) with the same masks."""
        mask_set = self.method.mask_set
        if mask_set.check_ranks:
            mask_set.verify_ranks()
