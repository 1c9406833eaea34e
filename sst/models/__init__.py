"""Model zoo: plain ``nn.Module`` builders with no sparsity logic.

Every builder has the signature ``builder(num_classes, input_shape, **options) -> nn.Module``
where ``input_shape`` is ``(channels, height, width)``.
"""

from __future__ import annotations

from .mlp import mlp
from .mobilenet import mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from .resnet50 import resnet50
from .resnet_cifar import resnet18_cifar, resnet20, resnet32, resnet56, resnet_cifar
from .vit import vit_b_16
from .wide_resnet import wide_resnet, wrn22_2

__all__ = [
    "mlp",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
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
