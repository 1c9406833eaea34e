"""Multi-layer perceptron baseline (Rumelhart, Hinton & Williams, Nature 1986)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from .shapes import check_input_shape


def mlp(
    num_classes: int,
    input_shape: tuple[int, int, int],
    hidden: Sequence[int] = (256, 256),
    dropout: float = 0.0,
) -> nn.Module:
    """Flatten the input, then ``Linear + ReLU`` per hidden width and a final ``Linear``.

    Args:
        num_classes: number of output logits.
        input_shape: ``(channels, height, width)`` of one example.
        hidden: widths of the hidden layers; empty gives multinomial logistic regression.
        dropout: dropout probability after each hidden ReLU (0 disables it).
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if any(int(width) < 1 for width in hidden):
        raise ValueError(f"hidden={list(hidden)}: every hidden width must be >= 1")
    in_features = math.prod(check_input_shape(input_shape))
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, int(width)), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = int(width)
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)
