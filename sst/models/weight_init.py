"""Standard weight initialisation shared by the convolutional models.

Follows torchvision's ResNet recipe (He et al., "Delving Deep into Rectifiers", ICCV 2015):
Kaiming-normal convolutions (``fan_out``, ReLU gain), batch-norm scale 1 and shift 0.
Linear layers keep PyTorch's default initialisation.
"""

from __future__ import annotations

from torch import nn


def init_conv_bn(model: nn.Module) -> None:
    """Initialise every conv and batch-norm layer of ``model`` in place."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            kaiming_conv(module)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def kaiming_conv(conv: nn.Conv2d) -> None:
    """Kaiming-normal (``fan_out``, ReLU) weights and zero bias for one convolution."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
