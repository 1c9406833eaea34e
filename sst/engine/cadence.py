"""When the loop's periodic duties are due: pure functions of the position, which the loop
calls after every optimizer step (an epoch or stage that the step completed is counted).

Order after a step: train record (every ``log_every`` steps) -> at an epoch boundary:
evaluation (every ``eval_every_epochs`` epochs, at the end of every stage and of the run),
then the checkpoint (every ``checkpoint_every_epochs`` epochs, every stage end, the run's
end) -> a stop signal the ranks agree on: checkpoint unless one was just written, then stop.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Boundary:
    """What the step that just ran closed: an epoch, a stage, the run."""

    epoch: bool
    stage: bool
    run: bool


def boundary_after(
    step: int, step_in_epoch: int, steps_per_epoch: int, stage_end: int, total_steps: int
) -> Boundary:
    """An epoch closes at the end of its batches and at the end of every stage and run."""
    stage = step == stage_end
    run = step >= total_steps
    return Boundary(epoch=step_in_epoch >= steps_per_epoch or stage or run, stage=stage, run=run)


def train_record_due(step: int, every: int) -> bool:
    """Mean train loss, LR and the hooks' metrics every ``every`` optimizer steps."""
    return step % every == 0


def epoch_duty_due(boundary: Boundary, epochs_done: int, every_epochs: int) -> bool:
    """Evaluation and checkpoints: at an epoch boundary every ``every_epochs`` epochs, and
    at every stage's and the run's end."""
    return boundary.epoch and (epochs_done % every_epochs == 0 or boundary.stage or boundary.run)
