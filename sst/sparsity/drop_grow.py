"""The drop-and-grow step shared by SET, RigL and SRigL.

One update of one layer, for any structure (see ``structure.py``):
1. drop the n_drop = int(n_active * f) active weights of smallest |w| layer-wide;
2. trim every unit to at most its capacity (only matters after SRigL redistributes fan-in);
3. grow every unit back to its capacity at the highest ``grow_scores`` among positions not
   kept, so a weight dropped in step 1 can come straight back (then it keeps its value).
Unstructured: one unit of capacity n_active, so exactly n_drop weights grow (RigL, Evci et
al. 2020). Constant fan-in and N:M: every surviving unit ends at its capacity (SRigL,
Lasby et al. 2024, section 4).
"""

from __future__ import annotations

import torch

from .mask_ops import row_counts, rowwise_topk_mask, top_indices
from .structure import Structure

NEG_INF = float("-inf")


def drop_smallest(weight: torch.Tensor, active: torch.Tensor, n_drop: int) -> torch.Tensor:
    """``active`` without its ``n_drop`` smallest-|w| entries (layer-wide).

    The search runs over the active entries only (a tenth of the layer at 90% sparsity).
    """
    if n_drop <= 0:
        return active.clone()
    flat = active.flatten()
    candidates = flat.nonzero().squeeze(1)
    magnitude = weight.detach().flatten()[candidates].abs().float()
    dropped = candidates[top_indices(-magnitude, n_drop)]
    kept = flat.clone()
    kept[dropped] = False
    return kept.view(active.shape)


GROW_TIES = ("index", "random")
"""How growth orders candidates whose grow score is exactly 0 (``DynamicSparsity.grow_ties``)."""


def break_zero_ties(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Grow scores (non-negative, e.g. |dense grad|) with their exact-zero ties broken at
    random: every 0 becomes -u, u ~ U(0, 1) drawn from ``generator`` (a CPU generator, one
    draw per entry of the layer), so the zero-gradient candidates still rank below every
    positive score, in a random order. ``generator=None`` returns ``scores``: ties keep
    ``torch.topk``'s order, as the RigL reference's ``top_k`` (google-research/rigl@d39fc7d
    ``rigl/sparse_optimizers_base.py`` adds N(0, 1e-5) noise to the drop scores only)."""
    if generator is None:
        return scores
    noise = torch.rand(scores.shape, generator=generator).to(scores.device)
    return torch.where(scores == 0, -noise, scores.float())


def unit_counts(mask: torch.Tensor, structure: Structure) -> torch.Tensor:
    """Active weights in every unit of ``structure`` (int64, one per row of ``units``)."""
    return row_counts(structure.units(mask.bool()))


def drop_and_grow(
    weight: torch.Tensor,
    mask: torch.Tensor,
    grow_scores: torch.Tensor,
    drop_fraction: float,
    structure: Structure,
    unit_capacity: torch.Tensor,
) -> torch.Tensor:
    """New boolean mask after one drop-and-grow step: ``drop_smallest``, then ``regrow``."""
    active = mask.bool()
    n_active = int(torch.count_nonzero(active).item())
    kept = drop_smallest(weight, active, int(n_active * drop_fraction))
    return regrow(weight, kept, grow_scores, structure, unit_capacity)


def regrow(
    weight: torch.Tensor,
    kept: torch.Tensor,
    grow_scores: torch.Tensor,
    structure: Structure,
    unit_capacity: torch.Tensor,
) -> torch.Tensor:
    """Steps 2 and 3: the boolean mask ``kept`` (what the drop left), trimmed and regrown
    so that unit i of ``structure.units`` holds ``unit_capacity[i]`` weights (0 for an
    ablated neuron)."""
    kept_units = structure.units(kept)
    kept_counts = row_counts(kept_units)
    if structure.kind != "unstructured" and bool((kept_counts > unit_capacity).any()):
        magnitude = structure.units(weight.detach().abs().float())
        kept_counts = torch.minimum(kept_counts, unit_capacity)
        kept_units = rowwise_topk_mask(torch.where(kept_units, magnitude, NEG_INF), kept_counts)
    need = unit_capacity - kept_counts
    scores = torch.where(kept_units, NEG_INF, structure.units(grow_scores.float()))
    grown = rowwise_topk_mask(scores, need.clamp(min=0))
    return structure.from_units(kept_units | grown, kept.shape)
