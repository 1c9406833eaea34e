"""A dense depthwise 3x3 convolution with a compiled CPU kernel (``_cpu.cpp``).

A sparse MobileNet keeps its depthwise convs dense (Howard et al., "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications", 2017). Once the 1x1 convs
run sparse, torch's fp32 depthwise conv (oneDNN on NCHW input at batch 1) takes about a
third of the model's time (docs/benchmarks.md). ``DepthwiseConv2d`` computes, per channel c,

    y[c, oy, ox] = b[c] + sum_{ky, kx < 3} W[c, ky, kx] * x_pad[c, s oy + ky, s ox + kx]

(padding 1, stride s = 1 or 2) from a zero-padded copy of each plane, vectorised along ox;
``condense(example_input=x)`` times it against torch's conv for every such layer and keeps
the faster (docs/condensed.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu


def is_depthwise3x3(conv: nn.Module) -> bool:
    """Whether ``conv`` is a Conv2d the kernel runs: groups = in = out channels, 3x3,
    padding 1 (zeros), stride 1 or 2, dilation 1."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.groups == conv.in_channels == conv.out_channels
        and tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.padding) == (1, 1)
        and conv.padding_mode == "zeros"
        and tuple(conv.dilation) == (1, 1)
        and conv.stride[0] == conv.stride[1]
        and conv.stride[0] in (1, 2)
    )


class DepthwiseConv2d(nn.Module):
    """Depthwise 3x3 conv (padding 1, stride 1 or 2): buffers ``weight`` (C, 1, 3, 3) and
    ``bias`` (C) or None, float32."""

    def __init__(self, channels: int, stride: int, *, bias: bool) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride={stride}: the depthwise kernel runs strides 1 and 2")
        self.channels = int(channels)
        self.stride = int(stride)
        self.register_buffer("weight", torch.zeros(self.channels, 1, 3, 3))
        self.register_buffer("bias", torch.zeros(self.channels) if bias else None)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> DepthwiseConv2d:
        """A copy of ``conv``.

        Raises:
            ValueError: if ``conv`` is not a depthwise 3x3 conv with padding 1, stride 1 or 2.
        """
        if not is_depthwise3x3(conv):
            raise ValueError(
                f"{conv} is not a depthwise 3x3 conv with padding 1, dilation 1 and stride 1 "
                f"or 2; keep it as a Conv2d"
            )
        module = cls(conv.in_channels, conv.stride[0], bias=conv.bias is not None)
        module.weight = conv.weight.detach().float().clone().contiguous()
        if conv.bias is not None:
            module.bias = conv.bias.detach().float().clone()
        return module

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"input of shape {tuple(x.shape)}: the layer takes (N, {self.channels}, H, W)"
            )
        runnable = (
            cpu.compiled_available()
            and x.is_cpu
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and (self.bias is None or self.bias.dtype == torch.float32)
            and not (x.requires_grad and torch.is_grad_enabled())
        )
        if not runnable:
            return F.conv2d(x, self.weight, self.bias, self.stride, 1, 1, self.channels)
        n, c, h, w = x.shape
        oh, ow = (h - 1) // self.stride + 1, (w - 1) // self.stride + 1
        x = x.contiguous()
        y = torch.empty(n, c, oh, ow)
        if y.numel():
            cpu._ext.depthwise(
                x.data_ptr(), self.weight.data_ptr(), cpu._ptr(self.bias), y.data_ptr(),
                n * c, c, h, w, oh, ow, self.stride, torch.get_num_threads(),
            )  # fmt: skip
        return y

    def extra_repr(self) -> str:
        return f"{self.channels}, stride={self.stride}, bias={self.bias is not None}"


__all__ = ["DepthwiseConv2d", "is_depthwise3x3"]
