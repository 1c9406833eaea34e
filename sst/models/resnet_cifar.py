"""CIFAR-style ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

``resnet_cifar`` / ``resnet20`` / ``resnet32`` / ``resnet56`` are the 6n+2 networks of
Section 4.2 (stages of 16/32/64 channels), here with 1x1 projection shortcuts (option B).
``resnet18_cifar`` is the ImageNet ResNet-18 adapted to 32x32 inputs (3x3 stride-1 stem, no
max-pool), as used by SRigL (Lasby et al., "Dynamic Sparse Training with Structured
Sparsity", ICLR 2024).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .blocks import BasicBlock, conv3x3
from .shapes import check_input_shape
from .weight_init import init_conv_bn


class CifarResNet(nn.Module):
    """3x3 stem conv + BN + ReLU, stages of ``BasicBlock``s, global average pool, ``fc``.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        widths: output channels of each stage (the stem uses ``widths[0]``).
        blocks: number of blocks in each stage.
        strides: stride of the first block of each stage.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        strides: Sequence[int],
    ) -> None:
        super().__init__()
        if not len(widths) == len(blocks) == len(strides):
            raise ValueError("widths, blocks and strides must have the same length")
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        channels = widths[0]
        for width, count, stride in zip(widths, blocks, strides, strict=True):
            stage = [BasicBlock(channels, width, stride)]
            stage += [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            channels = width
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.avgpool(self.layers(x))
        return self.fc(x.flatten(1))


def resnet18_cifar(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """ResNet-18 for small images: stages 64/128/256/512, two blocks each, strides 1/2/2/2."""
    channels = check_input_shape(input_shape)[0]
    return CifarResNet(
        num_classes,
        channels,
        widths=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        strides=(1, 2, 2, 2),
    )


def resnet_cifar(num_classes: int, input_shape: tuple[int, int, int], depth: int = 20) -> nn.Module:
    """CIFAR ResNet of ``depth = 6n + 2`` layers: stages 16/32/64 of ``n`` blocks each."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
    n = (depth - 2) // 6
    channels = check_input_shape(input_shape)[0]
    return CifarResNet(
        num_classes, channels, widths=(16, 32, 64), blocks=(n, n, n), strides=(1, 2, 2)
    )


def resnet20(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """ResNet-20 (n = 3), about 0.27M parameters."""
    return resnet_cifar(num_classes, input_shape, depth=20)


def resnet32(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """ResNet-32 (n = 5), about 0.46M parameters."""
    return resnet_cifar(num_classes, input_shape, depth=32)


def resnet56(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """ResNet-56 (n = 9), about 0.85M parameters."""
    return resnet_cifar(num_classes, input_shape, depth=56)
