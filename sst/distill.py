"""Knowledge distillation from a trained teacher run (Hinton et al. 2015).

loss = (1 - lambda) * CE(y, z_s) + lambda * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),
the KL averaged per sample. The teacher runs in eval mode under no_grad, outside DDP and
outside every sparsity hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import Hook
from .runs import load_run


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    hard_loss: torch.Tensor,
    *,
    temperature: float,
    weight: float,
) -> torch.Tensor:
    """(1 - weight) * hard_loss + weight * T^2 * KL(teacher_T || student_T), batch mean."""
    soft = F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=1),
        F.log_softmax(teacher_logits.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - weight) * hard_loss + weight * temperature**2 * soft


def load_teacher(run_dir: str | Path) -> nn.Module:
    """The trained model of a finished sst run (``sst.runs.load_run``)."""
    try:
        return load_run(run_dir).model
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"distill.teacher_run={str(run_dir)!r}: {error}") from error


class DistillHook(Hook):
    """Adds the teacher's soft targets to the loss of every micro-batch."""

    name = "distill"

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, weight: float = 0.9):
        if temperature <= 0:
            raise ValueError(f"distill.temperature={temperature} must be > 0")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"distill.weight={weight} is out of range: allowed values in [0, 1]")
        self.teacher = teacher
        self.temperature = temperature
        self.weight = weight

    def loss(self, inputs, targets, logits, loss):
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        return kd_loss(
            logits, teacher_logits, loss, temperature=self.temperature, weight=self.weight
        )

    def summary(self) -> dict[str, Any]:
        return {"distill_temperature": self.temperature, "distill_weight": self.weight}
