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
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .checkpoint import load
from .hooks import Hook
from .runlog import finished_summary


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


def teacher_checkpoint(run_dir: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    """(model config, model weights) of a finished sst run (``summary.json`` says so): its
    ``.hydra/config.yaml`` names the architecture, its ``checkpoints/last.pt`` holds the
    weights."""
    run_dir = Path(run_dir)
    config_path = run_dir / ".hydra" / "config.yaml"
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    for path in (config_path, checkpoint_path):
        if not path.exists():
            raise FileNotFoundError(
                f"distill.teacher_run={str(run_dir)!r} is not a finished sst run: {path} is missing"
            )
    if finished_summary(run_dir) is None:
        raise ValueError(f"distill.teacher_run={str(run_dir)!r} has not finished training")
    return OmegaConf.load(config_path).model, load(checkpoint_path)["model"]


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
