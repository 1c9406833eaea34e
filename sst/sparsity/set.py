"""SET: drop by magnitude, grow at random (Mocanu et al., Nature Communications 2018)."""

from __future__ import annotations

import torch

from .drop_grow import drop_and_grow, unit_counts
from .dynamic import DynamicSparsity
from .structure import Structure

UNSTRUCTURED = Structure("unstructured")


def update_mask(
    weight: torch.Tensor,
    mask: torch.Tensor,
    drop_fraction: float,
    generator: torch.Generator,
    *,
    structure: Structure = UNSTRUCTURED,
) -> torch.Tensor:
    """One SET update of one layer (Mocanu et al. 2018); the rule the ``SET`` method runs.

    Drops n_drop = int(n_active * drop_fraction) active weights of smallest |w| layer-wide,
    then grows every unit of ``structure`` back to its active count before the update at
    uniformly random positions among those not kept: the scores are
    ``torch.rand(weight.shape, generator=generator)`` (a CPU generator). Returns a boolean
    mask.
    """
    scores = torch.rand(weight.shape, generator=generator).to(weight.device)
    counts = unit_counts(mask, structure)
    return drop_and_grow(weight, mask, scores, drop_fraction, structure, counts)


class SET(DynamicSparsity):
    """Sparse Evolutionary Training: RigL's schedule with uniformly random growth, each
    layer by ``update_mask``.

    Random scores come from the method's own generator, so every rank grows the same
    connections and a resumed run grows the same ones as an uninterrupted run.
    """

    needs_dense_grad = False

    def update_layer(
        self,
        name: str,
        weight: torch.Tensor,
        mask: torch.Tensor,
        dense_grad: torch.Tensor | None,
        drop_fraction: float,
    ) -> torch.Tensor:
        return update_mask(weight, mask, drop_fraction, self.generator, structure=self.structure)
