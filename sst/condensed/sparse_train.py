"""Differentiable sparse operators for training in condensed form.

A masked layer with weight W (out, in) and 0/1 mask M trains on its kept values only,
V = W[M] (row-major order of the kept positions). With x (B, in) and g = dL/dy (B, out):

    forward        y[b, o]  = bias[o] + sum_{i: M[o, i]} W[o, i] x[b, i]
    input grad     gx[b, i] = sum_{o: M[o, i]} W[o, i] g[b, o]        (transpose product)
    weight grad    gV[o, i] = sum_b g[b, o] x[b, i], only at M[o, i]  (sampled dense-dense
                                                                      product, SDDMM)

so every product costs nnz * B multiply-adds instead of out * in * B: the three products of
SparseProp's CPU backward pass (Nikdan et al., "SparseProp: Efficient Sparse Backpropagation
for Faster Training of Neural Networks", ICML 2023), with the index structures (the
transposed index, the permutation of the values) built once per mask, since masks change
only every delta_t steps (RigL, SRigL: Lasby et al., "Dynamic Sparse Training with
Structured Sparsity", ICLR 2024).

A ``TrainLayout`` holds the positions: "fan_in" when every non-empty row keeps the same k
inputs (N:M is a special case; all-zero rows are ablated neurons, which output their bias),
"csr" otherwise. Both carry row pointers over all ``out`` rows (column indices in row order)
and the transposed (CSC) structure for the input gradient, and run the same kernels (equal
row lengths measured no faster than CSR's row pointers). A Conv2d weight (out, C, kh, kw)
is flattened to (out, C * kh * kw), F.unfold's order, and runs as the same products on the
unfolded input (``sparse_conv2d``).

The compiled kernels (``_sparse_train.cpp``, ``sparse_train_cpu.py``) run CPU tensors of one
dtype, float32 or float64; everything else (other dtypes, CUDA, the extension not built,
``sparse_train_cpu.FORCE_FALLBACK``) runs the PyTorch fallback, which
scatters the values into a dense weight and lets autograd differentiate the dense op: the
same results up to summation order, at dense cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import sparse_train_cpu as kernels
from .sparse_train_cpu import compiled_available, kernel_info
from .sparse_train_layout import (
    KINDS,
    TrainLayout,
    build_layout,
    gather_values,
    scatter_values,
)

__all__ = [
    "KINDS",
    "TrainLayout",
    "build_layout",
    "compiled_available",
    "gather_values",
    "kernel_info",
    "scatter_values",
    "sparse_conv2d",
    "sparse_linear",
]


def _dense_weight(values: Tensor, layout: TrainLayout) -> Tensor:
    """W (out, in) with ``values`` at the kept positions: differentiable w.r.t. values (the
    fallback's path; its gradient is dW gathered at the kept positions)."""
    flat = torch.zeros(
        layout.out_features * layout.in_features, dtype=values.dtype, device=values.device
    )
    flat = flat.index_put((layout.flat.to(values.device),), values)
    return flat.view(layout.out_features, layout.in_features)


def _check_operands(values: Tensor, bias: Tensor | None, layout: TrainLayout) -> None:
    if values.shape != (layout.nnz,):
        raise ValueError(f"values must have shape ({layout.nnz},), got {tuple(values.shape)}")
    if bias is not None and bias.shape != (layout.out_features,):
        raise ValueError(f"bias must have shape ({layout.out_features},), got {tuple(bias.shape)}")


def sparse_linear(
    x: Tensor, values: Tensor, layout: TrainLayout, bias: Tensor | None = None
) -> Tensor:
    """y = x W^T + bias over the kept weights only (module docstring), differentiable with
    respect to ``x`` (..., in), ``values`` (nnz,) and ``bias`` (out,)."""
    _check_operands(values, bias, layout)
    if x.shape[-1] != layout.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the layout {layout.in_features}")
    if x.numel() > 0 and kernels.runnable(x, values, bias):
        return kernels.linear(x, values, layout, bias)
    return F.linear(x, _dense_weight(values, layout), bias)


def sparse_conv2d(
    x: Tensor,
    values: Tensor,
    layout: TrainLayout,
    bias: Tensor | None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    kernel_size: int | tuple[int, int] = 1,
) -> Tensor:
    """Conv2d (zero padding, groups 1) over the kept weights, as ``sparse_linear`` on the
    unfolded input: y[b, o, l] = bias[o] + sum_{c: M[o, c]} W[o, c] cols[b, c, l], where
    cols = F.unfold(x) and c runs over (C, kh, kw). Differentiable w.r.t. x, values, bias."""
    if groups != 1:
        raise ValueError(f"sparse_conv2d supports groups=1 only, got groups={groups}")
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a pair of ints, got {padding!r}")
    kh, kw = _pair(kernel_size)
    if x.dim() != 4 or x.shape[1] * kh * kw != layout.in_features:
        raise ValueError(
            f"x of shape {tuple(x.shape)} with kernel {(kh, kw)} does not match the "
            f"layout's {layout.in_features} inputs per output channel"
        )
    _check_operands(values, bias, layout)
    geometry = (_pair(stride), _pair(padding), _pair(dilation), (kh, kw))
    if min(kernels.output_size(x.shape[-2:], geometry)) < 1:
        raise ValueError(
            f"x of spatial size {tuple(x.shape[-2:])} is smaller than the kernel {(kh, kw)} "
            f"with padding {geometry[1]} and dilation {geometry[2]}: no output position"
        )
    if x.numel() > 0 and kernels.runnable(x, values, bias):
        return kernels.conv2d(x, values, layout, bias, geometry)
    weight = _dense_weight(values, layout).view(layout.out_features, x.shape[1], kh, kw)
    return F.conv2d(x, weight, bias, geometry[0], geometry[1], geometry[2])


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {v!r}")
    return (int(v[0]), int(v[1]))
