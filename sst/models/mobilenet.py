"""MobileNets: V1 written here, V2 and V3 from torchvision, each with an ImageNet or a CIFAR stem.

- V1: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", arXiv:1704.04861, 2017 (Table 1: a 3x3 conv, 13 depthwise-separable
  blocks, average pool, fully connected; 4.2M parameters at width 1.0).
- V2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
- V3: Howard et al., "Searching for MobileNetV3", ICCV 2019 (Small and Large).

``stem="imagenet"`` is the published network (output stride 32: 224 -> 7). ``stem="cifar"``
keeps 32x32 inputs at a useful spatial size:

- V1: the input conv has stride 1 (32 -> 2x2 before the pool);
- V2 / V3: the input conv and the first stride-2 block after it have stride 1 (V2: the
  first 24-channel block; V3-Small: the first 16-channel block; V3-Large: the first
  24-channel block), so 32 -> 4x4 before the pool. Only the strides change: same layers,
  same parameters.

Every 1x1 convolution (V1's pointwise convs, V2/V3's expansion and projection convs, V3's
squeeze-excitation convs) is a ``PointwiseConv2d`` for ``sparsity.layer_types``
(``sst.sparsity.layers``); the input conv, the depthwise convs and the classifier are not.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from .shapes import check_input_shape
from .weight_init import init_conv_bn, kaiming_conv

STEMS = ("imagenet", "cifar")

# Howard et al. 2017, Table 1: (output channels, stride) of the 13 depthwise-separable blocks.
V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _check(stem: str, width: float) -> None:
    if stem not in STEMS:
        raise ValueError(f"stem={stem!r} is unknown: allowed values are {list(STEMS)}")
    if not width > 0:
        raise ValueError(f"width={width} must be positive (the width multiplier alpha)")


def _conv_bn_relu(
    c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv -> BN -> ReLU -> 1x1 pointwise conv -> BN -> ReLU (Howard et al.
    2017, Fig. 3)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise = _conv_bn_relu(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise = _conv_bn_relu(c_in, c_out, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(nn.Module):
    """MobileNetV1 with width multiplier ``width`` (alpha): every layer has
    max(int(alpha * M), 8) channels for the paper's M (the TF-Slim reference's rounding)."""

    def __init__(
        self, num_classes: int, in_channels: int, width: float, stem: str, dropout: float
    ) -> None:
        super().__init__()
        _check(stem, width)

        def channels(c: int) -> int:
            return max(int(c * width), 8)

        first = channels(32)
        self.stem = _conv_bn_relu(in_channels, first, 3, 2 if stem == "imagenet" else 1)
        blocks, c_in = [], first
        for c_out, stride in V1_BLOCKS:
            blocks.append(DepthwiseSeparable(c_in, channels(c_out), stride))
            c_in = channels(c_out)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


def mobilenet_v1(
    num_classes: int,
    input_shape: tuple[int, int, int],
    width: float = 1.0,
    stem: str = "imagenet",
    dropout: float = 0.0,
) -> nn.Module:
    """MobileNetV1 (Howard et al. 2017): 4.23M parameters at width 1.0 and 1000 classes
    (the paper's Table 1 network: 4.2M)."""
    channels = check_input_shape(input_shape)[0]
    return MobileNetV1(num_classes, channels, width, stem, dropout)


def _adapt(model: nn.Module, channels: int, stem: str, stride_one: int) -> nn.Module:
    """A torchvision MobileNet with ``channels`` input channels; with ``stem="cifar"`` the
    first ``stride_one`` stride-2 convs (the input conv, then the first downsampling block's
    depthwise conv) get stride 1 (padding (k - 1) / 2 keeps their output size = input size)."""
    first: nn.Conv2d = model.features[0][0]
    if channels != first.in_channels:
        model.features[0][0] = nn.Conv2d(
            channels,
            first.out_channels,
            kernel_size=first.kernel_size,
            stride=first.stride,
            padding=first.padding,
            bias=first.bias is not None,
        )
        kaiming_conv(model.features[0][0])
    if stem == "cifar":
        strided = [
            m for m in model.features.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)
        ]
        for conv in strided[:stride_one]:
            conv.stride = (1, 1)
    return model


def mobilenet_v2(
    num_classes: int,
    input_shape: tuple[int, int, int],
    width: float = 1.0,
    stem: str = "imagenet",
    dropout: float = 0.2,
) -> nn.Module:
    """torchvision MobileNetV2 (Sandler et al. 2018; 3.50M parameters at width 1.0 and 1000
    classes), untrained."""
    channels = check_input_shape(input_shape)[0]
    _check(stem, width)
    model = torchvision.models.mobilenet_v2(
        weights=None, num_classes=num_classes, width_mult=width, dropout=dropout
    )
    return _adapt(model, channels, stem, stride_one=2)


def _mobilenet_v3(
    size: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    width: float,
    stem: str,
    dropout: float,
) -> nn.Module:
    channels = check_input_shape(input_shape)[0]
    _check(stem, width)
    builder = getattr(torchvision.models, f"mobilenet_v3_{size}")
    model = builder(weights=None, num_classes=num_classes, width_mult=width, dropout=dropout)
    return _adapt(model, channels, stem, stride_one=2)


def mobilenet_v3_small(
    num_classes: int,
    input_shape: tuple[int, int, int],
    width: float = 1.0,
    stem: str = "imagenet",
    dropout: float = 0.2,
) -> nn.Module:
    """torchvision MobileNetV3-Small (Howard et al. 2019; 2.54M parameters at width 1.0 and
    1000 classes), untrained."""
    return _mobilenet_v3("small", num_classes, input_shape, width, stem, dropout)


def mobilenet_v3_large(
    num_classes: int,
    input_shape: tuple[int, int, int],
    width: float = 1.0,
    stem: str = "imagenet",
    dropout: float = 0.2,
) -> nn.Module:
    """torchvision MobileNetV3-Large (Howard et al. 2019; 5.48M parameters at width 1.0 and
    1000 classes), untrained."""
    return _mobilenet_v3("large", num_classes, input_shape, width, stem, dropout)
