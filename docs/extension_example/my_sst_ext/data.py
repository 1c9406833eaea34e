"""A synthetic dataset: the interface every sst dataset builder has (returns DataSplits)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from sst.data.splits import DataSplits


def stripes(train_size: int = 512, test_size: int = 256, *, seed: int = 0) -> DataSplits:
    """8x8 one-channel images of a horizontal (class 0) or vertical (class 1) bright stripe
    at a random position, with Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)

    def make(n: int) -> TensorDataset:
        labels = torch.randint(0, 2, (n,), generator=generator)
        where = torch.randint(0, 8, (n,), generator=generator)
        images = 0.3 * torch.randn(n, 1, 8, 8, generator=generator)
        for i in range(n):
            if labels[i] == 0:
                images[i, 0, where[i], :] += 1.0
            else:
                images[i, 0, :, where[i]] += 1.0
        return TensorDataset(images, labels)

    return DataSplits(
        train=make(train_size),
        test=make(test_size),
        num_classes=2,
        input_shape=(1, 8, 8),
        name="stripes",
    )
