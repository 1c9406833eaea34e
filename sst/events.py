"""The loop's duties that run on a cadence: train records, evaluation, checkpoints and
preemption. Each says when it is due; the loop calls them after every optimizer step, so
its own body stays a training step.

Order after a step (an epoch or stage that the step completed is already counted): train
record (every ``log_every`` steps) -> at an epoch boundary: evaluation (every
``eval_every_epochs`` epochs, at the end of every stage and of the run), then the checkpoint
(every ``checkpoint_every_epochs`` epochs, at every stage end and the run's) -> preemption (a
pending SIGTERM/SIGUSR1/SIGUSR2: checkpoint unless one was just written, then stop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loop import Loop

log = logging.getLogger("sst.loop")


class Preempted(Exception):
    """Raised after the checkpoint was saved on SIGTERM / SIGUSR1 / SIGUSR2 (``signum``)."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass(frozen=True)
class Boundary:
    """What the step that just ran closed: an epoch, a stage, the run."""

    epoch: bool
    stage: bool
    run: bool


class TrainRecords:
    """Mean train loss, LR and the hooks' metrics every ``every`` optimizer steps."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, loop: Loop, boundary: Boundary) -> None:
        if loop.step % self.every == 0:
            loop.record_train()


class Evaluation:
    """Test metrics every ``every_epochs`` epochs and at every stage's end."""

    def __init__(self, every_epochs: int) -> None:
        self.every_epochs = every_epochs

    def after_step(self, loop: Loop, boundary: Boundary) -> None:
        if boundary.epoch and (
            loop.epoch % self.every_epochs == 0 or boundary.stage or boundary.run
        ):
            loop.evaluate_and_record(stage_end=boundary.stage)


class Checkpointing:
    """``checkpoints/last.pt`` every ``every_epochs`` epochs and at every stage's end."""

    def __init__(self, every_epochs: int) -> None:
        self.every_epochs = every_epochs

    def after_step(self, loop: Loop, boundary: Boundary) -> None:
        if boundary.epoch and (
            loop.epoch % self.every_epochs == 0 or boundary.stage or boundary.run
        ):
            loop.save_checkpoint()


class Preemption:
    """A SIGTERM / SIGUSR1 / SIGUSR2 received during the step: save (unless this step was just
    saved), then raise ``Preempted``."""

    def after_step(self, loop: Loop, boundary: Boundary) -> None:
        if loop.stop_signal is not None:
            if loop.saved_step != loop.step:
                loop.save_checkpoint()
            raise Preempted(
                f"signal {loop.stop_signal}: checkpoint saved at step {loop.step}",
                signum=loop.stop_signal,
            )
