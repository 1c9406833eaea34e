"""One-shot magnitude pruning with fine-tuning: the baseline of gradual pruning and LR
rewinding (Han et al. 2015, one iteration; Renda et al. 2020, "fine-tuning")."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .checks import check_fraction, check_total_steps
from .layers import unwrap
from .pruning import PruningMethod


def load_dense_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copies trained weights (a state dict) into ``model`` in place, so the parameters
    stay the optimizer's."""
    if not isinstance(weights, Mapping):
        raise ValueError(
            f"dense_run={weights!r}: pass the trained weights as a state dict, e.g. "
            "sst.runs.load_run(folder).model.state_dict() (sst-train reads the folder itself)"
        )
    try:
        unwrap(model).load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"dense_run: the weights do not fit the model: {error}") from error


class OneShot(PruningMethod):
    """Trains dense until step ``prune_at`` * total_steps, prunes once to ``density`` by
    magnitude (any scope, distribution and structure, see ``sst.sparsity.pruning``), then
    fine-tunes for the rest of the run at the configured LR schedule.

    Args (besides ``SparsityMethod``'s):
        total_steps: optimizer steps of the run (required).
        prune_at: the prune's step as a fraction of ``total_steps``; 0 prunes the starting
            weights before the first step, 1 after the last (no fine-tuning).
        dense_run: trained weights (a state dict) the model starts from; with
            ``prune_at=0`` the run prunes them at once and fine-tunes for all its steps. In
            a config, the folder of a finished run: the launcher reads its weights (it reads
            every key in ``RUN_WEIGHTS`` so).
    """

    RUN_WEIGHTS = ("dense_run",)

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        total_steps: int | None = None,
        prune_at: float = 0.5,
        dense_run: Mapping[str, torch.Tensor] | str | None = None,
        **kwargs,
    ) -> None:
        check_total_steps(total_steps)
        check_fraction("prune_at", prune_at)
        if dense_run is not None:
            load_dense_weights(model, dense_run)
        self.prune_step = int(prune_at * total_steps)
        self.start_progress = 1.0 if self.prune_step == 0 else 0.0
        super().__init__(model, optimizer, density=density, total_steps=total_steps, **kwargs)

    def dense_step(self, step: int) -> bool:
        return step == self.prune_step

    def update(self, step: int) -> None:
        if step == self.prune_step and self.weights:
            self.prune_to(1.0, step)
