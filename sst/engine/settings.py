"""The trainer's settings (``conf/trainer/*.yaml``): the one schema of the ``trainer`` group,
checked when built, and the run's step plan."""

from __future__ import annotations

from dataclasses import dataclass

from .precision import AMP_MODES

# the masked layers train in condensed form: never, always, where measured faster
SPARSE_COMPUTE = ("off", "on", "auto")


@dataclass
class TrainerSettings:
    """``conf/trainer/default.yaml``: every key and its type (``sst.config.schema`` checks a
    composed config against these fields before anything is built)."""

    epochs: int
    max_steps: int | None
    batch_size: int
    eval_batch_size: int
    grad_accumulation: int
    label_smoothing: float
    grad_clip: float | None
    amp: str
    channels_last: bool
    deterministic: bool
    device: str
    num_workers: int
    log_every: int
    eval_every_epochs: int
    checkpoint_every_epochs: int
    progress_bar: bool
    sync_batchnorm: bool = False
    mask_check: bool = True
    sparse_compute: str = "off"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"trainer.epochs={self.epochs} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"trainer.max_steps={self.max_steps} must be >= 1 or null")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"trainer.label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"trainer.grad_clip={self.grad_clip} must be > 0 or null")
        if self.amp not in AMP_MODES:
            raise ValueError(f"trainer.amp={self.amp!r} is unknown: allowed values are {AMP_MODES}")
        if self.sparse_compute not in SPARSE_COMPUTE:
            raise ValueError(
                f"trainer.sparse_compute={self.sparse_compute!r} is unknown: allowed values "
                f"are {SPARSE_COMPUTE}"
            )
        if self.num_workers < 0:
            raise ValueError(f"trainer.num_workers={self.num_workers} must be >= 0")
        for key in (
            "grad_accumulation",
            "eval_batch_size",
            "log_every",
            "eval_every_epochs",
            "checkpoint_every_epochs",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"trainer.{key}={getattr(self, key)} must be >= 1")


def step_plan(batches_per_epoch: int, settings: TrainerSettings) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) of a run: an epoch of
    ``batches_per_epoch`` micro-batches makes ``batches_per_epoch // grad_accumulation``
    steps, and ``max_steps`` caps ``epochs`` x that."""
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
