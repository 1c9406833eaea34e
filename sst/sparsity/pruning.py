"""Magnitude pruning toward a final density: what GMP, one-shot pruning and LR rewinding
share.

A pruning method starts dense (or at some initial sparsity) and removes the smallest |w|
at moments of its own choosing, until every layer holds its final density. How far it has
gone is a *progress* p in [0, 1] (0: dense, 1: the final masks), and the scope decides
what the layers hold at p:

- layer scope (every distribution but ``global_magnitude``: uniform, ERK, explicit, ...):
  layer l is pruned to sparsity s_l(p) = p * s_l, where s_l = 1 - d_l is its final
  sparsity under the distribution; Zhu & Gupta (2017) prune each layer to the schedule's
  sparsity this way. The masked layers' sparsity at p is then p * (1 - density).
- global scope (``distribution=global_magnitude``): one |w| threshold over all free
  candidate layers keeps the largest 1 - p * (1 - density) of their weights, recomputed
  from the current weights at every prune (Renda et al. 2020; Gale et al. 2019).

Pruning only removes: a pruned weight scores below every kept one, so it never comes back.
Each layer's mask honours the structure at every p (``Structure.mask_at_density``); pruned
weights are zeroed together with their optimizer state (``MaskSet.set``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from . import distributions
from .method import SparsityMethod


class PruningMethod(SparsityMethod):
    """Magnitude pruning to ``density`` (see the module docstring); subclasses decide when.

    Args: those of ``SparsityMethod``. ``distribution=global_magnitude`` is the global
    scope, every other distribution the layer scope. The first masks hold progress
    ``start_progress`` (0: dense).
    """

    start_progress = 0.0
    prunes_later = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        **kwargs,
    ) -> None:
        structure = kwargs.get("structure", "unstructured")
        if kwargs.get("distribution", "erk") == "global_magnitude" and structure == "nm":
            raise ValueError(
                "distribution=global_magnitude (one threshold over all layers) cannot be "
                "combined with structure=nm, where every layer ends at N/M: use a per-layer "
                "distribution (uniform) with structure=nm"
            )
        super().__init__(model, optimizer, density=density, **kwargs)
        self.progress = self.start_progress

    @property
    def global_scope(self) -> bool:
        return self.distribution == "global_magnitude"

    @property
    def final_sparsity(self) -> float:
        return 1.0 - self.density

    # ----------------------------------------------------------------- targets
    def densities_at(self, progress: float) -> dict[str, float]:
        """Layer name -> density of every masked layer at ``progress`` (module docstring)."""
        if not self.global_scope:
            return {n: 1.0 - progress * (1.0 - self.layer_density[n]) for n in self.weights}
        # layers with an explicit density (``densities``) approach it like the layer scope
        fixed = {n: 1.0 - progress * (1.0 - d) for n, d in self.fixed_densities.items()}
        result = distributions.global_magnitude(
            self._current_weights(),
            1.0 - progress * self.final_sparsity,
            dense=self.dense_layers,
            fixed=fixed,
        )
        kept = self.mask_set.kept_counts()
        out = {}
        for name, weight in self.weights.items():
            density = result[name]
            if self.structure.kind == "constant_fanin":  # every neuron keeps one weight
                density = max(density, weight.shape[0] / weight.numel())
            # pruned weights are zeros: when the kept ones are fewer than the budget
            # (constant fan-in rounds down), the threshold is 0 and admits them all
            out[name] = min(density, kept[name] / weight.numel())
        return out

    def _current_weights(self) -> dict[str, torch.Tensor]:
        """The candidates' weights, the masked layers' times their masks."""
        masks = self.mask_set.masks
        out = {}
        for name, weight in self.candidates.items():
            w = weight.detach()
            out[name] = w * masks[name] if name in masks else w
        return out

    @torch.no_grad()
    def masks_at(self, progress: float) -> dict[str, torch.Tensor]:
        """Boolean masks at ``progress``: the largest |w| among the weights still kept,
        per layer density and structure (``Structure.mask_at_density``)."""
        densities = self.densities_at(progress)
        out = {}
        for name, weight in self.weights.items():
            scores = weight.detach().abs().float()
            # pruned weights rank below every kept one
            scores = torch.where(self.masks[name].bool(), scores, -1.0)
            out[name] = self.structure.mask_at_density(scores, densities[name])
        return out

    # ----------------------------------------------------------------- the policy
    def initial_masks(self) -> dict[str, torch.Tensor]:
        """Every weight kept (progress 0), else the masks at ``start_progress``, pruned
        from the starting weights (the mask set keeps every weight when this is asked)."""
        if self.start_progress <= 0.0:
            return {n: torch.ones_like(w, dtype=torch.bool) for n, w in self.weights.items()}
        return self.masks_at(self.start_progress)

    @torch.no_grad()
    def prune_to(self, progress: float, step: int) -> None:
        """Prunes every masked layer to ``progress`` (never back toward dense)."""
        progress = min(max(progress, self.progress), 1.0)
        masks = self.masks_at(progress)
        self.mask_set.set(masks)
        self.progress = progress
        self.last_update = {
            "prune/target_sparsity": progress * self.final_sparsity,
            "prune/step": float(step),
        }

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "progress": self.progress}

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.progress = float(state["progress"])


def progress_of_density(target_density: float, final_density: float) -> float:
    """The progress at which the masked layers hold ``target_density`` (1 at the final)."""
    if final_density >= 1.0:
        return 1.0
    return min(1.0, (1.0 - target_density) / (1.0 - final_density))


__all__ = ["PruningMethod", "progress_of_density"]
