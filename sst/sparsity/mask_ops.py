"""Mask kernels shared by the update rules: top-k selection, counting and conversion.

Each is exact and written for the CPU's slow paths: on a 2.4M-entry ResNet-50 layer,
``bool.to(float32)`` and ``bool.sum(dim)`` take about 4x and 2x longer than the same work
through a ``uint8`` view, and ``torch.topk`` selecting a few percent of the entries runs a
single-threaded pass over all of them (see ``top_indices``).
"""

from __future__ import annotations

import math

import torch


def _as_bytes(mask: torch.Tensor) -> torch.Tensor:
    # a view of any other dtype as uint8 reinterprets its bytes, so only bool may pass
    if mask.dtype != torch.bool:
        raise TypeError(f"expected a boolean mask, got dtype {mask.dtype}")
    return mask.view(torch.uint8)


def as_float(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A boolean mask as 0/1 values of ``dtype`` (through a ``uint8`` view: same result)."""
    return _as_bytes(mask).to(dtype)


def row_counts(units: torch.Tensor) -> torch.Tensor:
    """True entries per row of a 2-D boolean mask, as int64."""
    return _as_bytes(units).sum(dim=1, dtype=torch.int32).long()


def top_indices(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of the 1-D ``flat``: the set ``torch.topk`` picks
    (ties aside), found faster on the CPU for large tensors.

    ``torch.topk`` on the CPU is a single-threaded selection over all n entries (about
    20-40 ms for a 2.4M-entry layer). Here a strided sample of about 4096 entries gives a
    threshold tau that at least k entries should reach (the sample's expected share of the
    top k plus 3 sigma); the exact top k is then taken among the entries >= tau alone
    (3-7 ms in all). When fewer than k reach tau, it falls back to the full ``topk``, so
    the result is exact either way. ``torch.topk`` ranks NaN highest, so the filter is
    ``not (score < tau)``, which admits NaN (and everything when tau itself is NaN).
    """
    n = flat.numel()
    if flat.device.type != "cpu" or n < 32768:
        return torch.topk(flat, k, sorted=False).indices
    sample = flat[:: n // 4096]
    expected = k * sample.numel() / n
    k_sample = min(sample.numel(), int(expected + 3.0 * math.sqrt(expected)) + 8)
    tau = torch.topk(sample, k_sample, sorted=False).values.min()
    candidates = (flat < tau).logical_not_().nonzero().squeeze(1)
    if candidates.numel() < k:
        return torch.topk(flat, k, sorted=False).indices
    return candidates[torch.topk(flat[candidates], k, sorted=False).indices]


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of ``scores`` (flattened)."""
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[top_indices(flat, k)] = True
    return mask.view(scores.shape)


def rowwise_topk_mask(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row i of the 2-D ``scores``, the ``counts[i]`` largest entries (no Python loop).

    Takes the top max(counts) of every row in one ``topk`` and keeps the first counts[i].
    """
    if scores.shape[0] == 1:
        return topk_mask(scores, int(counts[0].item()))
    k_max = int(counts.max().item()) if counts.numel() else 0
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k_max <= 0:
        return mask
    if bool((counts == k_max).all()):
        idx = torch.topk(scores, k_max, dim=1, sorted=False).indices
        return mask.scatter_(1, idx, True)
    idx = torch.topk(scores, k_max, dim=1, sorted=True).indices
    take = torch.arange(k_max, device=scores.device).unsqueeze(0) < counts.unsqueeze(1)
    return mask.scatter_(1, idx, take)
