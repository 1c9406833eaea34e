"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

Pre-activation blocks (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016)
with optional dropout between the two convolutions.
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import conv3x3
from .shapes import check_input_shape
from .weight_init import init_conv_bn


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3 -> BN-ReLU-dropout-conv3x3, plus a shortcut.

    When the shape changes, the shortcut is a 1x1 conv applied to the pre-activated input;
    otherwise it is the identity on the raw input.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-``depth``-``width``: 3x3 stem (16 ch), three stages, BN-ReLU, average pool, ``fc``."""

    def __init__(
        self, num_classes: int, in_channels: int, depth: int, width: int, dropout: float
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = conv3x3(in_channels, 16)
        stages: list[nn.Module] = []
        channels = 16
        for stage_width, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = [WideBlock(channels, stage_width, stride, dropout)]
            blocks += [WideBlock(stage_width, stage_width, 1, dropout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = stage_width
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def wide_resnet(
    num_classes: int,
    input_shape: tuple[int, int, int],
    depth: int = 22,
    width: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """Build WRN-``depth``-``width`` (``depth = 6n + 4``) with dropout probability ``dropout``."""
    channels = check_input_shape(input_shape)[0]
    return WideResNet(num_classes, channels, depth=depth, width=width, dropout=dropout)


def wrn22_2(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """WRN-22-2, about 1.10M parameters."""
    return wide_resnet(num_classes, input_shape, depth=22, width=2)
