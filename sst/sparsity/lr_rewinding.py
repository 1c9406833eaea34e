"""Iterative magnitude pruning with LR rewinding (Renda, Frankle & Carbin, ICLR 2020,
"Comparing Rewinding and Fine-tuning in Neural Network Pruning")."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .checks import check_choice, check_fraction, check_total_steps
from .pruning import PruningMethod, progress_of_density
from .stages import Stage

RETRAIN = ("lr_rewinding", "weight_rewinding", "fine_tuning")


def round_densities(density: float, prune_fraction: float, rounds: int | None) -> list[float]:
    """The density after each pruning round: round r keeps (1 - prune_fraction) ** r of the
    weights, the last round exactly ``density``. Without ``rounds``, their number is the
    smallest r with (1 - f) ** r <= 1.01 * density (the paper's densities are 0.8 ** r
    rounded to three digits: 0.107 is 0.8 ** 10 = 0.1074). Raises ``ValueError`` for
    ``rounds`` that reach ``density`` before the last: the rounds after would prune nothing
    and retrain the same network again."""
    if rounds is None:
        if density >= 1.0:
            return []
        rounds = max(1, math.ceil(math.log(1.01 * density) / math.log(1.0 - prune_fraction)))
    densities = [max((1.0 - prune_fraction) ** r, density) for r in range(1, rounds)] + [density]
    if rounds > 1 and densities[-2] <= density:
        reached = densities.index(density) + 1
        raise ValueError(
            f"rounds={rounds} with prune_fraction={prune_fraction} reaches density={density} "
            f"after {reached} round(s): the other {rounds - reached} would prune nothing; "
            f"use rounds<={reached}, or leave rounds unset (derived from the two)"
        )
    return densities


class LRRewinding(PruningMethod):
    """Train dense for one stage of T steps; then ``rounds`` times: prune
    ``prune_fraction`` of the remaining weights by magnitude, and retrain for T steps
    replaying the LR schedule from its start, keeping the final weights (LR rewinding).

    One run holds every round: round r is the loop's stage r (``stages``), which prunes at
    its start (``on_stage_start``), is evaluated and checkpointed at its end, and resumes at
    the exact step after a kill. Pruning follows ``sst.sparsity.pruning``: by default one
    global |w| threshold over every candidate layer, the last layer included (Renda et al.
    2020, and ``conf/sparsity/lr_rewinding.yaml``: one default for the library and the
    config); any scope, distribution and structure. NVIDIA's 2:4 recipe (ASP) is
    ``rounds=1, structure=nm, distribution=uniform``.

    Args (besides ``SparsityMethod``'s):
        total_steps: T, the optimizer steps of one stage (required).
        distribution: ``global_magnitude`` (the default: Renda et al.'s one threshold over
            all convs and the final linear layer) or any per-layer distribution.
        prune_fraction: share of the remaining weights pruned per round (Renda et al.: 0.2).
        rounds: number of pruning rounds; None derives it from ``density`` and
            ``prune_fraction`` (``round_densities``); the last round always ends at
            ``density``.
        retrain: ``lr_rewinding`` (keep the weights, replay the LR schedule),
            ``weight_rewinding`` (restore every weight and buffer saved after optimizer
            step ``rewind_step`` of the dense stage, then train T - rewind_step steps with
            the LR schedule from ``rewind_step``: Frankle et al. 2019) or ``fine_tuning``
            (keep the weights and train at the schedule's final LR).
        rewind_step: see ``weight_rewinding`` (0: the initial weights).
        reset_momentum: clear the optimizer state at every round (the reference keeps it).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        total_steps: int | None = None,
        distribution: str = "global_magnitude",
        prune_fraction: float = 0.2,
        rounds: int | None = None,
        retrain: str = "lr_rewinding",
        rewind_step: int = 0,
        reset_momentum: bool = False,
        **kwargs,
    ) -> None:
        check_total_steps(total_steps)
        check_fraction("prune_fraction", prune_fraction, low_open=True)
        if prune_fraction >= 1.0:
            raise ValueError(f"prune_fraction={prune_fraction} must be below 1")
        if rounds is not None and rounds < 1:
            raise ValueError(f"rounds={rounds} is out of range: allowed values are >= 1 or null")
        check_choice("retrain", retrain, RETRAIN)
        if not 0 <= rewind_step < total_steps:
            raise ValueError(
                f"rewind_step={rewind_step} is out of range: allowed values are 0 to "
                f"total_steps - 1 ({total_steps - 1})"
            )
        super().__init__(
            model,
            optimizer,
            density=density,
            total_steps=total_steps,
            distribution=distribution,
            **kwargs,
        )
        self.prune_fraction = prune_fraction
        self.retrain = retrain
        self.rewind_step = rewind_step if retrain == "weight_rewinding" else 0
        self.reset_momentum = reset_momentum
        self.densities = round_densities(density, prune_fraction, rounds)
        self.rounds = len(self.densities)
        self.round = 0
        self.rewind_state: dict[str, torch.Tensor] | None = None
        if retrain == "weight_rewinding" and self.rewind_step == 0:
            self._save_rewind_state()

    # ----------------------------------------------------------------- stages
    def stages(self, steps_per_stage: int) -> list[Stage]:
        """Stage 0: dense training for T steps; stage r >= 1: round r. A round lasts T
        steps (T - rewind_step under weight rewinding) and replays the LR schedule from
        its start (from ``rewind_step`` under weight rewinding), or holds its last value
        (fine-tuning)."""
        length = steps_per_stage - self.rewind_step
        stages = [Stage(0, 0, steps_per_stage, lr_start=0)]
        for index in range(1, self.rounds + 1):
            start = steps_per_stage + (index - 1) * length
            hold = steps_per_stage - 1 if self.retrain == "fine_tuning" else None
            lr_start = start - self.rewind_step
            stages.append(Stage(index, start, start + length, lr_start=lr_start, lr_hold=hold))
        return stages

    def density_after_round(self, index: int) -> float:
        return 1.0 if index == 0 else self.densities[index - 1]

    @torch.no_grad()
    def on_stage_start(self, stage: Stage) -> None:
        """Round r >= 1 starts by pruning to its density, then rewinds (weights) and resets
        the optimizer state when asked."""
        self.round = stage.index
        if stage.index == 0 or not self.weights:
            return
        density = self.density_after_round(stage.index)
        self.prune_to(progress_of_density(density, self.density), self.step)
        self.last_update["prune/round"] = float(stage.index)
        if self.retrain == "weight_rewinding":
            if self.rewind_state is None:
                raise RuntimeError(
                    f"weight rewinding needs the weights of step {self.rewind_step}, which "
                    "were never saved: run the dense stage from its start"
                )
            self.model.load_state_dict(self.rewind_state)
            self.mask_set.apply()
        if self.reset_momentum and self.optimizer is not None:
            for group in self.optimizer.param_groups:
                for param in group["params"]:
                    self.optimizer.state.pop(param, None)

    def dense_step(self, step: int) -> bool:
        """Dense through the dense stage (round 0: nothing is pruned yet) and at the step
        whose weights weight rewinding saves; every round prunes at its stage start, where
        training in condensed form expands anyway."""
        saves = self.retrain == "weight_rewinding" and step == self.rewind_step
        return self.round == 0 or saves

    def update(self, step: int) -> None:
        if self.retrain == "weight_rewinding" and step == self.rewind_step:
            self._save_rewind_state()

    def _save_rewind_state(self) -> None:
        self.rewind_state = {
            k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
        }

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["round"] = self.round
        if self.rewind_state is not None:
            state["rewind_state"] = {k: v.clone() for k, v in self.rewind_state.items()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.round = int(state["round"])
        rewind = state.get("rewind_state")
        self.rewind_state = {k: v.clone() for k, v in rewind.items()} if rewind else None

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "prune/round": float(self.round)}
