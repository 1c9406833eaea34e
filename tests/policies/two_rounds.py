"""A throw-away multi-stage policy: static masks, trained in two stages that each replay
the learning-rate schedule from its start (the shape of LR rewinding, without pruning)."""

from __future__ import annotations

from sst.sparsity.method import SparsityMethod
from sst.sparsity.stages import Stage, replayed_stages


class TwoRounds(SparsityMethod):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[int] = []

    def stages(self, steps_per_stage: int) -> list[Stage]:
        return replayed_stages(2, steps_per_stage)

    def on_stage_start(self, stage: Stage) -> None:
        self.started.append(stage.index)
