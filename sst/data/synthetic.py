"""Learnable Gaussian-cluster data for smoke tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset

from .splits import DataSplits


def _sample(means: torch.Tensor, size: int, noise: float, gen: torch.Generator) -> TensorDataset:
    labels = torch.randint(0, means.shape[0], (size,), generator=gen)
    inputs = means[labels] + noise * torch.randn((size, *means.shape[1:]), generator=gen)
    return TensorDataset(inputs, labels)


def synthetic(
    num_classes: int = 4,
    *,
    input_shape: Sequence[int] = (1, 8, 8),
    train_size: int = 512,
    test_size: int = 128,
    seed: int = 0,
    noise: float = 0.5,
) -> DataSplits:
    """One random N(0, 1) mean per class plus N(0, noise^2) noise; deterministic from ``seed``."""
    if len(input_shape) != 3:
        raise ValueError(f"dataset.input_shape must be (C, H, W), got {list(input_shape)}")
    c, h, w = (int(d) for d in input_shape)
    shape = (c, h, w)
    if num_classes < 2:
        raise ValueError(f"dataset.num_classes must be at least 2, got {num_classes}")
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn((num_classes, *shape), generator=gen)
    train = _sample(means, train_size, noise, gen)
    test = _sample(means, test_size, noise, gen)
    return DataSplits(
        train=train,
        test=test,
        num_classes=num_classes,
        input_shape=shape,
        name="synthetic",
    )
