"""The training engine, without Hydra or a command line: the ``Loop`` and the small objects
it owns and calls (train step, records, checkpointer, stop signals, cadence rules), the
hooks methods plug in through, and distillation.

- ``loop``: ``Loop``, the position (step, epoch, stage) and the order of the duties;
- ``settings``: ``TrainerSettings`` (the ``trainer`` group's schema) and ``step_plan``;
- ``step``: ``TrainStep`` (LR, micro-batches, AMP, clipping) and the loss window;
- ``precision``: autocast and the fp16 grad scaler; ``evaluation``: test metrics;
- ``records``: train records, evaluations, best/last, stage rows, the progress bar;
- ``checkpointer``, ``signals``, ``cadence``, ``rng``: saving, stopping, when, seeding;
- ``hooks``: ``Hook``, ``SparsityHook`` and ``SparseComputeHook``; ``distill``:
  ``DistillHook`` and ``kd_loss``.
"""

from .hooks import Hook, SparsityHook
from .loop import Loop
from .settings import TrainerSettings, step_plan
from .signals import Preempted
from .step import NonFiniteLoss

__all__ = [
    "Hook",
    "Loop",
    "NonFiniteLoss",
    "Preempted",
    "SparsityHook",
    "TrainerSettings",
    "step_plan",
]
