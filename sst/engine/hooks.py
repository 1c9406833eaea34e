"""The loop's extension points. Sparsity methods and distillation plug in here; the loop
itself has no method-specific branch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from sst.sparsity.stages import Stage


class Hook:
    """Every method is optional. Calls come in this order for each optimizer step:
    ``loss`` (per micro-batch) -> backward -> ``before_optimizer_step`` (gradients are
    accumulated and unscaled, not yet clipped) -> optimizer step -> ``after_optimizer_step``.
    ``on_stage_start`` comes before the first step of each training stage, then
    ``on_step_start`` before the first micro-batch of every step; ``on_epoch_end`` after the
    last step of each epoch; ``before_save`` before the loop gathers a checkpoint's state
    (the run's last step always saves one). A hook with ``has_state = False`` has no entry in
    the checkpoint (and needs none to resume).
    """

    name = "hook"
    has_state = True

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        return loss

    def before_optimizer_step(self) -> None:
        pass

    def after_optimizer_step(self) -> None:
        pass

    def on_step_start(self, step: int) -> None:
        """Before the forward pass of optimizer step ``step`` (1-based)."""

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def before_save(self) -> None:
        """Before the model, optimizer and hook states of a checkpoint are gathered."""

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


def call_hooks(hooks: Sequence[Hook], method: str, *args: Any) -> None:
    """``hook.<method>(*args)`` for every hook, in order (the calls that return nothing)."""
    for hook in hooks:
        getattr(hook, method)(*args)


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


class LayerForm(Protocol):
    """Two forms of the model's masked layers (``sst.condensed.training.SparseCompute``):
    condensed (kept values only) and masked-dense."""

    def condense(self) -> None: ...

    def expand(self) -> None: ...

    def state(self) -> dict[str, Any]: ...


class SparseComputeHook(Hook):
    """Trains the masked layers in condensed form between the steps that need them dense
    (``trainer.sparse_compute``): masked-dense for every step the sparsity method marks
    (``method.dense_step``: dense gradients, mask changes), at a stage start (a method may
    prune there) and for checkpoints (dense weights, masks, dense optimizer state: today's
    format; the run ends with one); condensed for every other step. Comes before the
    sparsity hook in the loop's list."""

    name = "sparse_compute"
    has_state = False

    def __init__(self, form: LayerForm, method) -> None:
        self.form = form
        self.method = method

    def on_step_start(self, step: int) -> None:
        if self.method.dense_step(step):
            self.form.expand()
        else:
            self.form.condense()

    def on_stage_start(self, stage: Stage) -> None:
        self.form.expand()

    def before_save(self) -> None:
        self.form.expand()

    def summary(self) -> dict[str, Any]:
        return {"sparse_compute": self.form.state()}
