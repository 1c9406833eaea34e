"""Model zoo: plain ``nn.Module`` builders with no sparsity logic.

Every builder has the signature ``builder(num_classes, input_shape, **options) -> nn.Module``
where ``input_shape`` is ``(channels, height, width)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sst.models.mlp import mlp
from sst.models.resnet50 import resnet50
from sst.models.resnet_cifar import resnet18_cifar, resnet20, resnet32, resnet56, resnet_cifar
from sst.models.vit import vit_b_16
from sst.models.wide_resnet import wide_resnet, wrn22_2

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "resnet18_cifar": resnet18_cifar,
    "wrn22_2": wrn22_2,
    "wide_resnet": wide_resnet,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet_cifar": resnet_cifar,
    "resnet50": resnet50,
    "vit_b_16": vit_b_16,
}

__all__ = [
    "MODELS",
    "mlp",
    "resnet18_cifar",
    "resnet20",
    "resnet32",
    "resnet50",
    "resnet56",
    "resnet_cifar",
    "vit_b_16",
    "wide_resnet",
    "wrn22_2",
]
