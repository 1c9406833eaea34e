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


SPARSE_INIT_RULES = ("he", "grad_flow")
"""The rules of ``sparse_reinit``: the standard deviation of a neuron with k kept inputs."""


def sparse_init_std(fan_in: torch.Tensor, rule: str) -> torch.Tensor:
    """Per neuron, the standard deviation of its re-drawn weights, from ``fan_in`` (its k
    kept inputs, an integer tensor):

    - ``he``: sqrt(2 / k), He et al. 2015's std with the sparse fan-in (variance 2/k; Evci
      et al. 2022, "Gradient flow in sparse neural networks and how lottery tickets win").
      A neuron with k = 0 is drawn as if k = 1 (its weights are all masked anyway).
    - ``grad_flow``: 2 / k, the SRigL authors' ``grad_flow_init``
      (calgaryml/condensed-sparsity@3052bb8 ``src/rigl_torch/utils/sparse_init.py``:
      ``tensor[i].normal_(0, 2 / fan_in)``, whose second argument is a standard
      deviation), 0 for a neuron with k = 0. For k > 2 it is below He's (2/k is the
      square of sqrt(2/k)): for k = 57, std 0.035 where He gives 0.19.
    """
    if rule == "he":
        return torch.sqrt(2.0 / fan_in.clamp(min=1))
    if rule == "grad_flow":
        return torch.where(fan_in > 0, 2.0 / fan_in.clamp(min=1), 0.0)
    raise ValueError(
        f"sparse_init_rule={rule!r} is unknown: allowed values are {list(SPARSE_INIT_RULES)}"
    )


@torch.no_grad()
def sparse_reinit(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    generator: torch.Generator,
    rule: str = "he",
) -> None:
    """Re-draws every weight in place from normal(0, std_i), std_i = ``sparse_init_std`` of
    its output neuron i's active fan-in k_i under ``rule``: std sqrt(2 / k_i) for ``he``
    (variance 2 / k_i: He init with the sparse fan-in, Evci et al. 2022), std 2 / k_i for
    ``grad_flow`` (the SRigL authors' rule). The noise is the same for both rules, drawn
    layer by layer from ``generator``. Inactive weights get values too: the caller
    re-applies the masks."""
    for name, weight in weights.items():
        rows = masks[name].reshape(weight.shape[0], -1)
        fan_in = torch.count_nonzero(rows, dim=1).unsqueeze(1)
        std = sparse_init_std(fan_in, rule)
        noise = torch.randn(rows.shape, generator=generator).to(weight.device)
        weight.copy_((noise * std).view(weight.shape).to(weight.dtype))
