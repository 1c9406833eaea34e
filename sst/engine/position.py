"""Where a run is: optimizer steps taken, epochs closed, steps into the current epoch, and
the last stage whose start hooks ran; with the stage arithmetic of ``sst.sparsity.stages``."""

from __future__ import annotations

import math
from typing import Any

from sst.sparsity.stages import Stage, check_stages, stage_at

from .cadence import Boundary, boundary_after


class Position:
    """The position of a run through ``stages`` of ``steps_per_epoch`` steps an epoch."""

    def __init__(self, stages: list[Stage], steps_per_epoch: int) -> None:
        check_stages(stages)
        self.stages = stages
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = stages[-1].end
        self.step = self.epoch = self.step_in_epoch = 0
        self.stage_started = -1  # index of the last stage whose start hooks ran

    @property
    def stage(self) -> Stage:
        """The stage of the step about to be taken."""
        return stage_at(self.stages, self.step)

    def stage_at_last_step(self) -> Stage:
        """The stage of the step just taken; once a last stage without steps has started,
        that stage."""
        last = self.stages[-1]
        if last.steps == 0 and self.stage_started >= last.index:
            return last
        return stage_at(self.stages, max(self.step - 1, 0))

    def epoch_float(self) -> float:
        """Epochs trained, fractional within the current epoch."""
        return self.epoch + self.step_in_epoch / self.steps_per_epoch

    def stage_fields(self) -> dict[str, float]:
        """``{"stage": index}`` of the step just taken in a multi-stage run, else nothing."""
        return {"stage": self.stage_at_last_step().index} if len(self.stages) > 1 else {}

    def total_epochs(self) -> int:
        return sum(math.ceil(s.steps / self.steps_per_epoch) for s in self.stages)

    def advance(self) -> Boundary:
        """Counts a step taken; returns what it closed (an epoch is closed by
        ``close_epoch``, after the hooks have seen it)."""
        self.step += 1
        self.step_in_epoch += 1
        return boundary_after(
            self.step,
            self.step_in_epoch,
            self.steps_per_epoch,
            self.stage_at_last_step().end,
            self.total_steps,
        )

    def close_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "stage_started": self.stage_started,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.stage_started = state["stage_started"]
