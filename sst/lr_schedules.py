"""Learning-rate schedules as pure functions of the optimizer step.

Each returns the multiplier of the base learning rate at ``step`` (0-based: the step about to
be taken). Settings given in epochs are turned into steps with ``steps_per_epoch``. A linear
warm-up from base_lr / warmup_steps to base_lr over ``warmup_epochs`` precedes every schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _warmup(step: int, warmup_steps: int) -> float | None:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return None


def constant(step: int, *, steps_per_epoch: int, total_steps: int, warmup_epochs: float = 0):
    """lr = base_lr after the warm-up."""
    warm = _warmup(step, int(warmup_epochs * steps_per_epoch))
    return 1.0 if warm is None else warm


def step_decay(
    step: int,
    *,
    steps_per_epoch: int,
    total_steps: int,
    gamma: float,
    step_size_epochs: float,
    warmup_epochs: float = 0,
) -> float:
    """lr = base_lr * gamma ** floor(epoch / step_size) (SRigL CIFAR: x0.2 every 77 epochs)."""
    warm = _warmup(step, int(warmup_epochs * steps_per_epoch))
    if warm is not None:
        return warm
    return gamma ** math.floor(step / (step_size_epochs * steps_per_epoch))


def multistep(
    step: int,
    *,
    steps_per_epoch: int,
    total_steps: int,
    gamma: float,
    milestones_epochs: Sequence[float],
    warmup_epochs: float = 0,
) -> float:
    """lr = base_lr * gamma ** (milestones passed) (ImageNet ResNet-50: x0.1 at 30/70/90)."""
    warm = _warmup(step, int(warmup_epochs * steps_per_epoch))
    if warm is not None:
        return warm
    passed = sum(step >= int(m * steps_per_epoch) for m in milestones_epochs)
    return gamma**passed


def cosine(
    step: int,
    *,
    steps_per_epoch: int,
    total_steps: int,
    warmup_epochs: float = 0,
    min_factor: float = 0.0,
) -> float:
    """Cosine decay to base_lr * min_factor at the last step, after the warm-up
    (Loshchilov & Hutter 2017, without restarts)."""
    warmup_steps = int(warmup_epochs * steps_per_epoch)
    warm = _warmup(step, warmup_steps)
    if warm is not None:
        return warm
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
