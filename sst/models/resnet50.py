"""ImageNet ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016),
built from torchvision with random weights."""

from __future__ import annotations

import torchvision
from torch import nn

from .shapes import check_input_shape
from .weight_init import kaiming_conv


def resnet50(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """torchvision ResNet-50 (25.56M parameters at 1000 classes), untrained.

    For inputs that do not have 3 channels, the stem ``conv1`` is replaced by a conv with the
    right number of input channels and otherwise identical settings.
    """
    channels = check_input_shape(input_shape)[0]
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if channels != model.conv1.in_channels:
        old = model.conv1
        model.conv1 = nn.Conv2d(
            channels,
            old.out_channels,
            kernel_size=old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            dilation=old.dilation,
            groups=old.groups,
            bias=old.bias is not None,
            padding_mode=old.padding_mode,
        )
        kaiming_conv(model.conv1)
    return model
