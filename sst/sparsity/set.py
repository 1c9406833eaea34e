"""SET: drop by magnitude, grow at random (Mocanu et al., Nature Communications 2018)."""

from __future__ import annotations

import torch

from .dynamic import DynamicSparsity


class SET(DynamicSparsity):
    """Sparse Evolutionary Training: RigL's schedule with uniformly random growth.

    Random scores come from the method's own generator, so every rank grows the same
    connections and a resumed run grows the same ones as an uninterrupted run.
    """

    needs_dense_grad = False

    def grow_scores(self, name: str, weight: torch.Tensor, dense_grad: torch.Tensor | None):
        return torch.rand(weight.shape, generator=self.generator).to(weight.device)
