"""RigL: drop by magnitude, grow by dense-gradient magnitude (Evci et al., ICML 2020)."""

from __future__ import annotations

import torch

from .drop_grow import break_zero_ties, drop_and_grow, unit_counts
from .dynamic import DynamicSparsity
from .structure import Structure

UNSTRUCTURED = Structure("unstructured")


def update_mask(
    weight: torch.Tensor,
    mask: torch.Tensor,
    dense_grad: torch.Tensor,
    drop_fraction: float,
    *,
    structure: Structure = UNSTRUCTURED,
    tie_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One RigL update of one layer (Evci et al. 2020, Algorithm 1); the rule the ``RigL``
    method runs on every masked layer.

    Drops n_drop = int(n_active * drop_fraction) active weights of smallest |w| layer-wide,
    then grows every unit of ``structure`` back to its active count before the update at the
    largest |dL/d(m*w)| among its positions not kept (a weight dropped in this update may
    grow back). Unstructured (the default, the paper's rule): one unit, the whole layer, so
    exactly n_drop connections grow. Constant fan-in / N:M: every neuron / group of M keeps
    its count. Candidates with exactly zero gradient tie: they grow in ``torch.topk``'s
    order, or in a random order drawn from ``tie_generator`` when one is given
    (``break_zero_ties``). Returns a boolean mask.
    """
    counts = unit_counts(mask, structure)
    scores = break_zero_ties(dense_grad.abs(), tie_generator)
    return drop_and_grow(weight, mask, scores, drop_fraction, structure, counts)


class RigL(DynamicSparsity):
    """RigL on any structure: every ``delta_t`` steps until ``t_end``, drop the smallest
    weights and grow where the dense gradient is largest (Evci et al. 2020, Algorithm 1),
    each layer by ``update_mask``."""

    needs_dense_grad = True

    def update_layer(
        self,
        name: str,
        weight: torch.Tensor,
        mask: torch.Tensor,
        dense_grad: torch.Tensor | None,
        drop_fraction: float,
    ) -> torch.Tensor:
        assert dense_grad is not None
        return update_mask(
            weight,
            mask,
            dense_grad,
            drop_fraction,
            structure=self.structure,
            tie_generator=self.tie_generator,
        )
