"""Sparsity structures: which masks are allowed, orthogonal to the method that picks them.

A mask is viewed as a matrix of *units*, one row per unit:
- ``unstructured``: one unit, the whole layer; it holds ``budget`` active weights.
- ``constant_fanin``: one unit per output neuron (a conv output channel counts its whole
  in_channels/groups * kh * kw filter); every surviving neuron holds exactly k weights
  (Lasby et al. 2024, SRigL).
- ``nm``: one unit per group of M consecutive weights along the input channels (for a conv,
  at each kernel position, as NVIDIA's 2:4 kernels and ASP group them in NHWC); every group
  holds exactly N (N:M sparsity, 2:4 on NVIDIA GPUs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .mask_ops import rowwise_topk_mask, topk_mask

STRUCTURES = ("unstructured", "constant_fanin", "nm")


def layer_budget(numel: int, density: float) -> int:
    """A layer's budget: the number of weights it keeps at ``density``,
    int(numel * density), robust to float error (0.29 * 100 is 28.999...).

    Vocabulary used throughout sst: a layer's *budget* is its target number of kept
    weights; a unit's *capacity* is the kept weights one unit of the structure holds when
    every unit is alive (``Structure.capacity``); *kept counts* are the kept weights a mask
    holds now (``MaskSet.kept_counts``).
    """
    return int(numel * density + 1e-6)


@dataclass(frozen=True)
class Structure:
    """A structure kind plus its N:M parameters."""

    kind: str = "unstructured"
    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURES:
            raise ValueError(f"structure={self.kind!r} is unknown: allowed values are {STRUCTURES}")
        if self.kind == "nm" and not 0 < self.n <= self.m:
            raise ValueError(f"N:M needs 0 < n <= m, got n={self.n}, m={self.m}")

    def check_layer(self, name: str, shape: Sequence[int], density: float) -> None:
        """Fails early, naming the layer, when the layer cannot take this structure."""
        if self.kind == "constant_fanin":
            k = layer_budget(math.prod(shape), density) // shape[0]
            if k < 1:
                raise ValueError(
                    f"layer {name!r} (shape {tuple(shape)}) gets a constant fan-in of 0 at "
                    f"density {density:.4g}: raise the density or keep the layer dense"
                )
        if self.kind == "nm" and shape[1] % self.m != 0:
            raise ValueError(
                f"layer {name!r} has {shape[1]} input channels, which N:M with m={self.m} does "
                f"not divide: keep the layer dense (exclude it) or pick m dividing them"
            )

    def units(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (weight-shaped) as (n_units, unit_size); ``from_units`` inverts it."""
        if self.kind == "unstructured":
            return tensor.reshape(1, -1)
        if self.kind == "constant_fanin":
            return tensor.reshape(tensor.shape[0], -1)
        return tensor.movedim(1, -1).reshape(-1, self.m)

    def from_units(self, units: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The weight-shaped tensor whose ``units`` are ``units``."""
        if self.kind == "nm" and len(shape) > 2:
            return units.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
        return units.reshape(tuple(shape))

    def capacity(self, shape: Sequence[int], density: float) -> int:
        """Active weights per unit when every unit is alive."""
        numel = math.prod(shape)
        if self.kind == "unstructured":
            return layer_budget(numel, density)
        if self.kind == "constant_fanin":
            return layer_budget(numel, density) // shape[0]
        return self.n

    def random_mask(
        self, shape: Sequence[int], density: float, generator: torch.Generator
    ) -> torch.Tensor:
        """A uniformly random mask of this structure (boolean, weight-shaped)."""
        scores = torch.rand(tuple(shape), generator=generator)
        return self.top_mask(scores, self.capacity(shape, density))

    def top_mask(self, scores: torch.Tensor, capacity: int) -> torch.Tensor:
        """Per unit, the ``capacity`` positions with the highest score."""
        units = self.units(scores)
        counts = torch.full((units.shape[0],), capacity, device=scores.device)
        return self.from_units(rowwise_topk_mask(units, counts), scores.shape)

    def mask_at_density(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        """The highest ``scores`` at ``density`` under this structure, for any density from
        the final one up to 1 (gradual pruning passes through them): the top
        int(numel * density) (unstructured); the top k = int(numel * density) // n_out of
        every neuron (constant fan-in); under N:M, the top N of every group of M plus the
        next-highest scores layer-wide up to int(numel * density), no group holding more
        than ceil(M * density), so every group holds at most its share at every density
        and exactly N at density N/M. Boolean, shaped like ``scores``."""
        numel = scores.numel()
        if self.kind == "unstructured":
            return topk_mask(scores, layer_budget(numel, density))
        if self.kind == "constant_fanin":
            return self.top_mask(scores, layer_budget(numel, density) // scores.shape[0])
        if density < self.n / self.m - 1e-9:
            raise ValueError(
                f"density={density:g} is below N:M {self.n}:{self.m}: every group keeps N"
            )
        units = self.units(scores)
        groups = units.shape[0]
        cap = min(self.m, math.ceil(self.m * density - 1e-9))
        budget = min(max(layer_budget(numel, density), self.n * groups), cap * groups)
        order = units.argsort(dim=1, descending=True, stable=True)
        positions = torch.arange(self.m, device=units.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, positions)  # 0 = the group's top
        keep = rank < self.n
        extra = budget - self.n * groups
        if extra > 0:
            optional = (rank >= self.n) & (rank < cap)
            keep |= topk_mask(torch.where(optional, units, float("-inf")), extra)
        return self.from_units(keep, scores.shape)

    def verify(self, mask: torch.Tensor, capacity: int) -> None:
        """Raises if ``mask`` breaks the structure: every unit holds ``capacity`` active
        weights, or 0 (an ablated neuron) under constant fan-in."""
        counts = self.units(mask).sum(dim=1)
        ok = counts == capacity
        if self.kind == "constant_fanin":
            ok |= counts == 0
        if not bool(ok.all()):
            bad = counts[~ok][:5].tolist()
            raise AssertionError(
                f"{self.kind} mask has units with {bad} active, expected {capacity}"
            )
