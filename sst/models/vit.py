"""Vision Transformer ViT-B/16 (Dosovitskiy et al., "An Image is Worth 16x16 Words:
Transformers for Image Recognition at Scale", ICLR 2021), built from torchvision."""

from __future__ import annotations

import math

from torch import nn
from torchvision.models import VisionTransformer

from .shapes import check_input_shape


def vit_b_16(
    num_classes: int, input_shape: tuple[int, int, int], patch_size: int = 16
) -> nn.Module:
    """ViT-Base (12 layers, 12 heads, hidden 768, MLP 3072), untrained.

    The image size is the input height; the input must be square with a side divisible by
    ``patch_size``. At 224x224 with 16x16 patches and 1000 classes it has 86.57M parameters.
    For inputs that do not have 3 channels the patch embedding ``conv_proj`` is replaced.

    Raises:
        ValueError: if the input is not square or its side is not divisible by ``patch_size``.
    """
    channels, height, width = check_input_shape(input_shape)
    if height != width:
        raise ValueError(f"input_shape must be square for ViT, got {tuple(input_shape)!r}")
    if patch_size < 1 or height % patch_size != 0:
        raise ValueError(
            f"patch_size must divide the image size {height}, got patch_size={patch_size}"
        )
    model = VisionTransformer(
        image_size=height,
        patch_size=patch_size,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        num_classes=num_classes,
    )
    if channels != model.conv_proj.in_channels:
        model.conv_proj = _patch_embedding(channels, model.hidden_dim, patch_size)
    return model


def _patch_embedding(in_channels: int, hidden_dim: int, patch_size: int) -> nn.Conv2d:
    """Patch-embedding conv initialised like torchvision's (LeCun-normal weight, zero bias)."""
    conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
    fan_in = in_channels * patch_size * patch_size
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
    nn.init.zeros_(conv.bias)
    return conv
