"""Inference modules for sparse layers: condensed (constant fan-in, N:M) and CSR.

``CondensedLinear`` computes, for every surviving output neuron n (Lasby et al., "Dynamic
Sparse Training with Structured Sparsity", ICLR 2024),

    y[..., n] = b[n] + sum_j V[n, j] * x[..., I[n, j]],

and outputs its bias for an ablated neuron, so it keeps all ``out_features``.
``CondensedConv2d`` does the same for every output channel over its (c, ky, kx) fan-in.
They are inference modules: their tensors are buffers, and an input that requires grad runs
the differentiable PyTorch fallback. ``dtype=torch.bfloat16`` stores the values in bf16
(each within a relative 2^-8 of the fp32 weight, half the bytes); inputs, outputs, bias and
the sums stay fp32. On the CPU they run the compiled kernels (``cpu.py``),
on CUDA the Triton kernel (``gpu.py``), elsewhere the fallback.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu
from .packing import Condensed, condense_matrix, describe, flat_to_unit, index_dtype, value_dtype


class KernelCache(nn.Module):
    """A module whose compiled kernel (in the attribute named by ``kernel_attr``) holds its
    buffers' addresses: dropped after ``.to()``, ``load_state_dict`` and in copies (deepcopy,
    pickle), which rebuild it on their next call."""

    kernel_attr = "_kernel"

    def reset_kernel(self) -> None:
        """Drops the cached kernel; also needed after changing buffers in place."""
        setattr(self, self.kernel_attr, None)

    def _apply(self, fn, recurse: bool = True):
        self.reset_kernel()
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state[self.kernel_attr] = None
        return state

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.reset_kernel()
        super()._load_from_state_dict(*args, **kwargs)


class _CondensedBase(KernelCache):
    """Buffers ``values`` (n_live, k) of ``dtype`` (float32 or bfloat16), ``indices``
    (n_live, k) of ``index_dtype``, ``rows`` (n_live,) int32 or None (no ablated neuron),
    ``bias`` (out,) float32 or None; ``nm`` is (N, M) when the mask is N:M (stored
    compressed, and eligible for 2:4 on the GPU)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        k: int,
        n_live: int,
        *,
        bias: bool,
        nm: tuple[int, int] | None = None,
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.nm = None if nm is None else (int(nm[0]), int(nm[1]))
        self.register_buffer("values", torch.zeros(n_live, k, dtype=value_dtype(dtype)))
        self.register_buffer("indices", torch.zeros(n_live, k, dtype=index_dtype(self.in_features)))
        rows = None if n_live == out_features else torch.zeros(n_live, dtype=torch.int32)
        self.register_buffer("rows", rows)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._kernel = None

    @property
    def k(self) -> int:
        return self.values.shape[1]

    @property
    def n_live(self) -> int:
        return self.values.shape[0]

    @property
    def value_dtype(self) -> torch.dtype:
        """The dtype the values are stored in (float32 or bfloat16)."""
        return self.values.dtype

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def matrix(self) -> Condensed:
        return Condensed(self.values, self.indices, self.rows, self.out_features, self.in_features)

    def set_matrix(self, matrix: Condensed, bias: Tensor | None) -> None:
        """Copies a ``Condensed`` matrix (of this module's shape) and a bias in; the values
        are converted to this module's value dtype (rounded to nearest for bf16)."""
        self.values = matrix.values.detach().to(self.values.dtype).contiguous()
        self.indices = matrix.indices.contiguous()
        self.rows = None if matrix.rows is None else matrix.rows.to(torch.int32).contiguous()
        if bias is not None:
            self.bias = bias.detach().float().clone()
        elif self.bias is not None:
            self.bias = None
        self._kernel = None

    def dense_weight(self) -> Tensor:
        """The (out_features, fan_in) weight in the values' dtype, zeros where inactive."""
        return self.matrix().to_dense()

    def extra_repr(self) -> str:
        nm = f", nm={self.nm[0]}:{self.nm[1]}" if self.nm else ""
        values = "" if self.value_dtype == torch.float32 else ", values=bfloat16"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, "
            f"live={self.n_live}, index={str(self.indices.dtype).removeprefix('torch.')}{nm}"
            f"{values}"
        )


class CondensedLinear(_CondensedBase):
    """A constant fan-in ``nn.Linear`` in condensed form (see the module docstring)."""

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        mask: Tensor | None = None,
        *,
        name: str | None = None,
        ragged: bool = False,
        nm: tuple[int, int] | None = None,
        dtype: torch.dtype | str = torch.float32,
    ) -> CondensedLinear:
        """Condensed copy of ``linear``; ``mask`` (0/1, weight-shaped) defaults to
        ``weight != 0``. Zero rows are ablated neurons and output their bias. ``dtype``:
        the values' storage type, float32 or bfloat16 (round to nearest even).

        Raises:
            ValueError: naming the layer (``name``) if its rows hold different numbers of
                active weights (an unstructured layer: export it as CSR or dense).
        """
        weight = linear.weight.detach()
        mask = (weight != 0) if mask is None else mask.to(weight.device).bool()
        matrix = condense_matrix(weight * mask, mask, name=name, ragged=ragged)
        module = cls(
            linear.in_features,
            linear.out_features,
            matrix.k,
            matrix.n_live,
            bias=linear.bias is not None,
            nm=nm,
            dtype=dtype,
        )
        module.set_matrix(matrix, None if linear.bias is None else linear.bias.detach())
        return module

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:
            from . import gpu

            return gpu.condensed_linear(x, self.matrix(), self.bias)
        if self._kernel is None:
            self._kernel = cpu.LinearKernel(self.matrix(), self.bias)
        return self._kernel(x)

    def to_linear(self) -> nn.Linear:
        """The equivalent dense ``nn.Linear``."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def conv_padding(conv: nn.Conv2d, name: str | None) -> tuple[int, int]:
    """Symmetric (ph, pw) of ``conv``, resolving "valid" and "same".

    Raises:
        ValueError: for padding that is not symmetric zero padding.
    """
    if conv.padding_mode != "zeros":
        raise ValueError(
            f"{describe(name, tuple(conv.weight.shape))} uses padding_mode="
            f"{conv.padding_mode!r}: only zero padding is supported; keep the layer dense"
        )
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise ValueError(
                f"{describe(name, tuple(conv.weight.shape))} has asymmetric 'same' padding; "
                f"keep the layer dense"
            )
        return total[0] // 2, total[1] // 2
    return int(conv.padding[0]), int(conv.padding[1])


class CondensedConv2d(_CondensedBase):
    """A constant fan-in ``nn.Conv2d`` (groups 1, zero padding) in condensed form: every
    output channel keeps k (c, ky, kx) taps, indexed in PyTorch's flat fan-in order."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        k: int,
        n_live: int,
        *,
        bias: bool,
        nm: tuple[int, int] | None = None,
        mode: str = "auto",
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        fan_in = in_channels * math.prod(kernel_size)
        super().__init__(fan_in, out_channels, k, n_live, bias=bias, nm=nm, dtype=dtype)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.geometry = cpu.ConvGeometry(kernel_size, stride, padding, dilation)
        if mode not in cpu.ConvKernel.MODES:
            raise ValueError(f"mode={mode!r} is unknown: allowed values are {cpu.ConvKernel.MODES}")
        self.mode = mode

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.geometry.kernel_size)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        mask: Tensor | None = None,
        *,
        name: str | None = None,
        ragged: bool = False,
        nm: tuple[int, int] | None = None,
        mode: str = "auto",
        dtype: torch.dtype | str = torch.float32,
    ) -> CondensedConv2d:
        """Condensed copy of ``conv``; ``mask`` defaults to ``weight != 0``; ``dtype`` as in
        ``CondensedLinear.from_linear``.

        Raises:
            ValueError: naming the layer, for groups != 1, non-zero padding modes, or rows
                (output channels) with different numbers of active weights.
        """
        weight = conv.weight.detach()
        if conv.groups != 1:
            raise ValueError(
                f"{describe(name, tuple(weight.shape))} has groups={conv.groups}: the condensed "
                f"conv supports groups=1 only; keep the layer dense"
            )
        padding = conv_padding(conv, name)
        mask = (weight != 0) if mask is None else mask.to(weight.device).bool()
        out = weight.shape[0]
        matrix = condense_matrix(
            (weight * mask).reshape(out, -1), mask.reshape(out, -1), name=name, ragged=ragged
        )
        if nm is not None:  # N:M groups run along the input channels: store in that order
            units = flat_to_unit(matrix.indices.long(), tuple(weight.shape))
            order = torch.argsort(units, dim=1, stable=True)
            matrix.indices = matrix.indices.gather(1, order)
            matrix.values = matrix.values.gather(1, order)
        module = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            padding,
            conv.dilation,
            matrix.k,
            matrix.n_live,
            bias=conv.bias is not None,
            nm=nm,
            mode=mode,
            dtype=dtype,
        )
        module.set_matrix(matrix, None if conv.bias is None else conv.bias.detach())
        return module

    def forward(self, x: Tensor) -> Tensor:
        if self._kernel is None:
            self._kernel = cpu.ConvKernel(self.matrix(), self.bias, self.geometry, self.mode)
        self._kernel.mode = self.mode
        return self._kernel(x)

    def to_conv(self) -> nn.Conv2d:
        """The equivalent dense ``nn.Conv2d``."""
        g = self.geometry
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            g.kernel_size,
            stride=g.stride,
            padding=g.padding,
            dilation=g.dilation,
            bias=self.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight().view(self.weight_shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={g.kernel_size}, "
            f"stride={g.stride}, padding={g.padding}, dilation={g.dilation}, mode={self.mode}, "
            + super().extra_repr()
        )


# ------------------------------------------------------------------------------ CSR
class _CSRBase(nn.Module):
    """Buffers ``crow_indices``, ``col_indices`` (int32), ``csr_values`` of the
    (out, fan_in) weight, and ``bias``; the sparse tensor is built once per device."""

    def __init__(self, out_features: int, fan_in: int, nnz: int, *, bias: bool) -> None:
        super().__init__()
        self.out_features = int(out_features)
        self.fan_in = int(fan_in)
        self.register_buffer("crow_indices", torch.zeros(out_features + 1, dtype=torch.int32))
        self.register_buffer("col_indices", torch.zeros(nnz, dtype=torch.int32))
        self.register_buffer("csr_values", torch.zeros(nnz))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._sparse: Tensor | None = None

    def set_weight(self, weight2d: Tensor, bias: Tensor | None) -> None:
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            csr = weight2d.detach().float().to_sparse_csr()
        self.crow_indices = csr.crow_indices().to(torch.int32)
        self.col_indices = csr.col_indices().to(torch.int32)
        self.csr_values = csr.values().contiguous()
        self.bias = None if bias is None else bias.detach().float().clone()
        self._sparse = None

    def _apply(self, fn, recurse: bool = True):
        self._sparse = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._sparse = None
        super()._load_from_state_dict(*args, **kwargs)

    def sparse(self) -> Tensor:
        """The weight as a torch sparse CSR tensor (built once, dropped on ``.to()``)."""
        if self._sparse is None:
            self._sparse = torch.sparse_csr_tensor(
                self.crow_indices,
                self.col_indices,
                self.csr_values,
                (self.out_features, self.fan_in),
                check_invariants=False,
            )
        return self._sparse

    def dense_weight(self) -> Tensor:
        return self.sparse().to_dense()

    def _matmul(self, cols: Tensor) -> Tensor:
        """(out, fan_in) @ cols (fan_in, L) + bias."""
        w = self.sparse()
        if self.bias is None:
            return w @ cols
        return torch.addmm(self.bias.to(cols.dtype).unsqueeze(1), w, cols)


class CSRLinear(_CSRBase):
    """An unstructured sparse ``nn.Linear`` through PyTorch's CSR matmul."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor | None = None) -> CSRLinear:
        weight = linear.weight.detach()
        if mask is not None:
            weight = weight * mask.to(weight.device)
        module = cls(
            linear.out_features, linear.in_features, int((weight != 0).sum()),
            bias=linear.bias is not None,
        )  # fmt: skip
        module.set_weight(weight, linear.bias)
        return module

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self._matmul(x.reshape(-1, self.fan_in).t()).t()
        return y.reshape(*lead, self.out_features)


class CSRConv2d(_CSRBase):
    """An unstructured sparse ``nn.Conv2d`` (groups 1): unfold, then a CSR matmul."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        nnz: int,
        *,
        bias: bool,
    ) -> None:
        super().__init__(out_channels, in_channels * math.prod(kernel_size), nnz, bias=bias)
        self.in_channels = int(in_channels)
        self.geometry = cpu.ConvGeometry(kernel_size, stride, padding, dilation)

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, mask: Tensor | None = None, *, name: str | None = None
    ) -> CSRConv2d:
        if conv.groups != 1:
            raise ValueError(f"{describe(name, tuple(conv.weight.shape))}: groups must be 1")
        weight = conv.weight.detach()
        if mask is not None:
            weight = weight * mask.to(weight.device)
        module = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
            conv_padding(conv, name), conv.dilation, int((weight != 0).sum()),
            bias=conv.bias is not None,
        )  # fmt: skip
        module.set_weight(weight.reshape(conv.out_channels, -1), conv.bias)
        return module

    def forward(self, x: Tensor) -> Tensor:
        g = self.geometry
        oh, ow = g.output_size(x.shape[2], x.shape[3])
        # unfold costs fan_in * L floats per image: a few images at a time bound the memory
        step = max(1, (1 << 24) // max(1, self.fan_in * oh * ow))
        parts = []
        for chunk in x.split(step):
            cols = F.unfold(chunk, g.kernel_size, g.dilation, g.padding, g.stride)
            flat = cols.transpose(0, 1).reshape(self.fan_in, -1)
            y = self._matmul(flat)  # (out, n * L)
            parts.append(y.view(self.out_features, chunk.shape[0], oh, ow).transpose(0, 1))
        return torch.cat(parts) if len(parts) > 1 else parts[0]


CONDENSED_TYPES = (CondensedLinear, CondensedConv2d)
CSR_TYPES = (CSRLinear, CSRConv2d)
