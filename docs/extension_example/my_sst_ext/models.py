"""A small convolutional network: the interface every sst model builder has."""

from __future__ import annotations

from torch import nn


def tiny_cnn(num_classes: int, input_shape: tuple[int, int, int], width: int = 16) -> nn.Module:
    """Two 3x3 convolutions with ReLU, global average pooling, one linear classifier.

    sst calls a model builder with ``num_classes`` and ``input_shape`` (channels, height,
    width) from the dataset, plus the keys of the model's YAML file.
    """
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
