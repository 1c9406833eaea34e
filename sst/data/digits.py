"""scikit-learn's bundled 8x8 handwritten digits (no download needed)."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from .splits import DataSplits


def digits(test_fraction: float = 0.2, *, seed: int = 0) -> DataSplits:
    """1797 8x8 digit images in [0, 1] as (1, 8, 8) float32, stratified train/test split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
    bunch = load_digits()
    images = (bunch.images / 16.0).astype("float32")[:, None, :, :]
    labels = bunch.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return DataSplits(
        train=TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        test=TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
        num_classes=10,
        input_shape=(1, 8, 8),
        name="digits",
    )
