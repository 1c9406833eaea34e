"""A method's first masks and, optionally, its first weights under them."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .structure import Structure


def magnitude_masks(
    weights: Mapping[str, torch.Tensor], layer_density: Mapping[str, float], structure: Structure
) -> dict[str, torch.Tensor]:
    """Per layer, the largest |w| that the structure allows at the layer's density:
    int(numel * density) weights (unstructured), k = int(numel * density) // n_out per
    neuron (constant fan-in), N per group of M (N:M). Boolean, weight-shaped."""
    return {
        name: structure.top_mask(
            w.detach().abs().float(), structure.capacity(w.shape, layer_density[name])
        )
        for name, w in weights.items()
    }


def random_masks(
    weights: Mapping[str, torch.Tensor],
    layer_density: Mapping[str, float],
    structure: Structure,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Per layer, a uniformly random mask of the structure at the layer's density, drawn
    from ``generator`` layer by layer in order (equal seeds give equal masks)."""
    return {
        name: structure.random_mask(w.shape, layer_density[name], generator)
        for name, w in weights.items()
    }


@torch.no_grad()
def sparse_reinit(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    generator: torch.Generator,
) -> None:
    """Re-draws every weight in place from N(0, 2 / fan_in_active), fan_in_active being
    its neuron's active weights (He init with the sparse fan-in: Evci et al. 2022,
    "Gradient flow in sparse neural networks"). Inactive weights get values too: the
    caller re-applies the masks."""
    for name, weight in weights.items():
        rows = masks[name].reshape(weight.shape[0], -1)
        fan_in = torch.count_nonzero(rows, dim=1).unsqueeze(1).clamp(min=1)
        std = torch.sqrt(2.0 / fan_in)
        noise = torch.randn(rows.shape, generator=generator).to(weight.device)
        weight.copy_((noise * std).view(weight.shape).to(weight.dtype))
