"""Knowledge distillation from a trained teacher run (Hinton et al. 2015).

loss = (1 - lambda) * CE(y, z_s) + lambda * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),
the KL averaged per sample. The teacher runs in eval mode under no_grad, outside DDP and
outside every sparsity hook. The teacher is a finished run (``sst.launch.teacher`` plans it, and
``sst.launch.run`` trains it first when the student names it by overrides).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sst.runs.identity import config_hash
from sst.runs.load import LoadedRun, load_run

from .hooks import Hook


def soft_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch."""
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=1),
        F.log_softmax(teacher_logits.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return temperature**2 * kl


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    hard_loss: torch.Tensor,
    *,
    temperature: float,
    weight: float,
) -> torch.Tensor:
    """(1 - weight) * hard_loss + weight * T^2 * KL(teacher_T || student_T), batch mean."""
    soft = soft_loss(student_logits, teacher_logits, temperature)
    return (1.0 - weight) * hard_loss + weight * soft


def load_teacher(
    run_dir: str | Path, num_classes: int | None = None, input_shape: tuple | None = None
) -> LoadedRun:
    """A finished sst run, its trained model included (``sst.runs.load_run``), checked to
    take the student's inputs and predict its classes when those are given."""
    try:
        teacher = load_run(run_dir)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"distill.teacher_run={str(run_dir)!r}: {error}") from error
    checks = [("classes", num_classes, teacher.num_classes)]
    if input_shape is not None:
        checks.append(("inputs of shape", tuple(input_shape), tuple(teacher.input_shape)))
    for what, wanted, found in checks:
        if wanted is not None and wanted != found:
            raise ValueError(
                f"distill.teacher_run={str(run_dir)!r} was trained on {found} {what}, this "
                f"run's data set has {wanted}: distil from a teacher of the same data set"
            )
    return teacher


def teacher_identity(teacher: LoadedRun) -> dict[str, Any]:
    """What identifies the teacher in the student's summary: folder, config hash (the
    suffix of the folder's name, ``sst.runs.identity``), checkpoint sha256, test accuracy."""
    folder = teacher.folder
    suffix = folder.path.name.rsplit("-", 1)[-1]
    is_hash = len(suffix) == 8 and all(c in "0123456789abcdef" for c in suffix)
    return {
        "teacher_run": str(folder.path),
        "teacher_config_hash": suffix if is_hash else config_hash(folder.config),
        "teacher_checkpoint_sha256": folder.checkpoint_sha256(),
        "teacher_test_acc": (teacher.summary or {}).get("final_test_acc"),
    }


class DistillHook(Hook):
    """Adds the teacher's soft targets to the loss of every micro-batch, and reports the
    two terms apart (``train/loss_hard``: the cross-entropy; ``train/loss_soft``: T^2 * KL),
    averaged over the micro-batches since the last train record."""

    name = "distill"

    def __init__(
        self,
        teacher: nn.Module,
        *,
        temperature: float = 4.0,
        weight: float = 0.9,
        identity: dict[str, Any] | None = None,
    ):
        if temperature <= 0:
            raise ValueError(f"distill.temperature={temperature} must be > 0")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"distill.weight={weight} is out of range: allowed values in [0, 1]")
        self.teacher = teacher
        self.temperature = temperature
        self.weight = weight
        self.identity = dict(identity or {})
        self._sums: torch.Tensor | None = None  # (hard, soft) summed over micro-batches
        self._count = 0

    def loss(self, inputs, targets, logits, loss):
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
            soft = soft_loss(logits.detach(), teacher_logits, self.temperature)
        terms = torch.stack([loss.detach().float(), soft])
        self._sums = terms if self._sums is None else self._sums + terms
        self._count += 1
        return kd_loss(
            logits, teacher_logits, loss, temperature=self.temperature, weight=self.weight
        )

    def train_metrics(self) -> dict[str, float]:
        if self._sums is None or not self._count:
            return {}
        hard, soft = (self._sums / self._count).tolist()
        self._sums, self._count = None, 0
        return {"train/loss_hard": hard, "train/loss_soft": soft}

    def summary(self) -> dict[str, Any]:
        return {
            "distill_temperature": self.temperature,
            "distill_weight": self.weight,
            **self.identity,
        }

    def state_dict(self) -> dict[str, Any]:
        sums = self._sums.cpu() if self._sums is not None else None
        return {"sums": sums, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        device = next(self.teacher.parameters()).device
        self._sums = state["sums"].to(device) if state["sums"] is not None else None
        self._count = int(state["count"])
