"""Which layers a sparsity method masks and how dense each one is.

A ``Layout`` is decided once, at construction, from the method's settings: the candidate
layers (by type and name), the layers kept dense or given a density by hand, each layer's
density under the distribution (``distributions.DISTRIBUTIONS``) and structure, and the
masked layers (those below density 1) with their per-unit capacity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import distributions
from .layers import matching, select_layers
from .structure import Structure

ASP_ALIGNMENT = (8, 16)
"""NVIDIA ASP prunes a weight only when size(0) is a multiple of 8 and size(1) of 16
(NVIDIA/apex@6424da3 ``apex/contrib/sparsity/asp.py``, ``add_sparse_attributes``)."""


def asp_prunes(shape: Sequence[int]) -> bool:
    """Whether NVIDIA ASP prunes a weight of ``shape``: size(0) % 8 == 0 and size(1) % 16
    == 0, size(1) being a Linear's inputs or a Conv2d's input channels (per group); every
    other layer ASP skips and leaves dense (NVIDIA/apex@6424da3 ``asp.py``
    ``add_sparse_attributes``, its check for sparse tensor-core shapes)."""
    rows, columns = ASP_ALIGNMENT
    return len(shape) >= 2 and shape[0] % rows == 0 and shape[1] % columns == 0


@dataclass(frozen=True)
class Layout:
    """The layers of a method.

    Attributes:
        candidates: layer name -> weight of every candidate layer, in model order.
        dense_layers: candidates kept dense (``dense_first`` / ``dense_last``).
        fixed_densities: candidates given a density by hand (``densities``).
        layer_density: candidate name -> density.
        weights: the masked layers: candidates whose density is below 1.
        capacity: masked layer -> kept weights per unit of the structure when every unit
            is alive (``Structure.capacity``).
    """

    candidates: dict[str, nn.Parameter]
    dense_layers: list[str]
    fixed_densities: dict[str, float]
    layer_density: dict[str, float]
    weights: dict[str, nn.Parameter]
    capacity: dict[str, int]


def plan_layout(
    model: nn.Module,
    structure: Structure,
    *,
    density: float,
    distribution: str,
    erk_power: float = 1.0,
    layer_types: Sequence[str] = ("Linear", "Conv2d"),
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    dense_first: bool = False,
    dense_last: bool = False,
    densities: Mapping[str, float] | None = None,
    asp_layers: bool = False,
    mask_free_layers: bool = False,
) -> Layout:
    """The layout of ``model`` under a method's settings (see ``SparsityMethod``); every
    masked layer is checked against the structure. ``asp_layers`` leaves out the candidates
    that NVIDIA ASP skips (``asp_prunes``), as ``exclude`` would. ``mask_free_layers``
    masks every candidate that is neither kept dense nor given a density by hand, also one
    whose density comes out 1 now (a method that prunes later by one global threshold: the
    weights then decide, not those at the start)."""
    distributions.check_distribution(distribution)
    candidates = select_layers(model, layer_types=layer_types, include=include, exclude=exclude)
    if asp_layers:
        candidates = {n: p for n, p in candidates.items() if asp_prunes(p.shape)}
    names = list(candidates)
    dense = ([names[0]] if dense_first else []) + ([names[-1]] if dense_last else [])
    fixed = fixed_densities(names, densities)
    density_of = split_density(
        candidates, structure, distribution, density, dense=dense, fixed=fixed, power=erk_power
    )
    free = {n for n in names if n not in dense and n not in fixed} if mask_free_layers else set()
    weights = {n: p for n, p in candidates.items() if density_of[n] < 1.0 or n in free}
    for name, weight in weights.items():
        structure.check_layer(name, weight.shape, density_of[name])
    capacity = {n: structure.capacity(w.shape, density_of[n]) for n, w in weights.items()}
    return Layout(candidates, dense, fixed, density_of, weights, capacity)


def fixed_densities(
    names: Sequence[str], densities: Mapping[str, float] | None
) -> dict[str, float]:
    """Layer name -> density from the ``{regex: density}`` overrides (a regex matching no
    layer is an error; a later regex overrides an earlier one)."""
    fixed = {}
    for pattern, value in (densities or {}).items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"densities: {pattern!r}: {value!r} is not a number: a layer's density is a "
                "number in (0, 1]"
            ) from None
        if not 0.0 < value <= 1.0:
            raise ValueError(
                f"densities: {pattern!r}: {value} is out of range: a layer's density must be "
                "in (0, 1]"
            )
        for name in matching(names, [str(pattern)], "densities"):
            fixed[name] = value
    return fixed


def split_density(
    candidates: Mapping[str, torch.Tensor],
    structure: Structure,
    distribution: str,
    density: float,
    *,
    dense: Sequence[str],
    fixed: Mapping[str, float],
    power: float,
) -> dict[str, float]:
    """Layer name -> density: N/M for every layer not kept dense under N:M (which admits
    only ``density`` = N/M and no per-layer overrides), else the distribution's split."""
    if structure.kind != "nm":
        return distributions.layer_densities(
            distribution, candidates, density, dense=dense, fixed=fixed, power=power
        )
    target = structure.n / structure.m
    if abs(density - target) > 1e-9 or fixed:
        raise ValueError(
            f"density={density} does not match N:M {structure.n}:{structure.m}"
            f" (every masked layer has density {target:g}); set density={target:g}"
        )
    if all(name in dense for name in candidates):
        raise ValueError(
            f"structure=nm keeps every candidate layer dense (dense_first / dense_last: "
            f"{list(dense)}): no layer is left to mask; select more layers"
        )
    return {name: 1.0 if name in dense else target for name in candidates}
