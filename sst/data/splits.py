"""The container every dataset builder returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DataSplits:
    """Train and test datasets plus what a model needs to know about them."""

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) of one transformed sample
    name: str
