"""RigL: drop by magnitude, grow by dense-gradient magnitude (Evci et al., ICML 2020)."""

from __future__ import annotations

import torch

from .drop_grow import drop_and_grow
from .dynamic import DynamicSparsity
from .structure import Structure


def update_mask(
    weight: torch.Tensor, mask: torch.Tensor, dense_grad: torch.Tensor, drop_fraction: float
) -> torch.Tensor:
    """One unstructured RigL update of one layer.

    Drops n_drop = int(n_active * drop_fraction) active weights of smallest |w|, then grows
    n_drop connections at the largest |dL/d(m*w)| among positions not kept (a weight dropped
    in this update may grow back). The active count is unchanged. Returns a boolean mask.
    """
    n_active = torch.count_nonzero(mask).reshape(1)
    return drop_and_grow(
        weight, mask, dense_grad.abs(), drop_fraction, Structure("unstructured"), n_active
    )


class RigL(DynamicSparsity):
    """RigL on any structure: every ``delta_t`` steps until ``t_end``, drop the smallest
    weights and grow where the dense gradient is largest (Evci et al. 2020, Algorithm 1)."""

    needs_dense_grad = True

    def grow_scores(self, name: str, weight: torch.Tensor, dense_grad: torch.Tensor | None):
        assert dense_grad is not None
        return dense_grad.abs()
