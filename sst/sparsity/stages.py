"""Training stages: a run as a sequence of step ranges, each with its own LR replay.

Most runs are one stage. LR rewinding (Renda et al. 2020) and its fine-tuning baseline
(``LRRewinding(retrain="fine_tuning")``) train in rounds from one run's weights: each round
is a stage that starts the learning-rate schedule again (or holds its final value), is
evaluated at its end, and can be resumed in the middle. Like every schedule in sst, the
stage of a step is a pure function of the step, so a checkpoint needs nothing but the step
to resume inside any stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """Optimizer steps ``start`` (inclusive) to ``end`` (exclusive) of a run.

    The learning rate at global step s is the schedule's value at ``s - lr_start``:
    ``lr_start = start`` replays the schedule from its first value (LR rewinding). A stage
    with ``lr_hold`` set uses the schedule's value at that step throughout (fine-tuning at
    the final LR). The last stage of a run may have no steps (``start == end``): the loop
    starts it after the last step and evaluates it, so a method can change the model
    between two evaluations (targeted dropout's final prune). A ``label`` names the stage's
    test accuracy in the run's summary (``test_acc_<label>``).
    """

    index: int
    start: int
    end: int
    lr_start: int
    lr_hold: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"stage {self.index}: needs 0 <= start <= end, got {self}")

    @property
    def steps(self) -> int:
        return self.end - self.start

    def schedule_step(self, step: int) -> int:
        """The step of the LR schedule that global step ``step`` uses."""
        return step - self.lr_start if self.lr_hold is None else self.lr_hold


def single_stage(steps: int) -> list[Stage]:
    """A run of ``steps`` optimizer steps in one stage."""
    return [Stage(index=0, start=0, end=steps, lr_start=0)]


def replayed_stages(rounds: int, steps: int, *, hold_final_lr: bool = False) -> list[Stage]:
    """``rounds`` consecutive stages of ``steps`` steps each. Each replays the LR schedule
    from its first value, or (``hold_final_lr``) every stage after the first continues at
    the schedule's last value (fine-tuning)."""
    stages = []
    for index in range(rounds):
        start = index * steps
        hold = steps - 1 if hold_final_lr and index > 0 else None
        stages.append(Stage(index, start, start + steps, lr_start=start, lr_hold=hold))
    return stages


def stage_at(stages: Sequence[Stage], step: int) -> Stage:
    """The stage that optimizer step ``step`` (0-based: the step about to be taken) is in;
    the last stage for a step past the end."""
    for stage in stages:
        if step < stage.end:
            return stage
    return stages[-1]


def check_stages(stages: Sequence[Stage]) -> None:
    """Stages must tile the run: numbered 0.. in order, each starting where the last ended;
    only the last may have no steps, and not the first."""
    if not stages:
        raise ValueError("a run needs at least one stage")
    expected = 0
    for index, stage in enumerate(stages):
        if stage.index != index or stage.start != expected:
            raise ValueError(f"stages must follow each other from step 0: {list(stages)}")
        if stage.steps == 0 and (index == 0 or index != len(stages) - 1):
            raise ValueError(f"only the last stage (not the first) may have no steps: {stage}")
        expected = stage.end
