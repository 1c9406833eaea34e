"""Unstructured sparse layers with compiled CPU kernels, in fp32 or int8 (docs/condensed.md,
"Unstructured layers and INT8").

An unstructured layer's rows hold different numbers of weights, so it is stored as CSR: row
pointers, input (column) indices and values. ``SparseLinear`` and ``SparseConv2d`` compute

    y[n] = b[n] + s[n] * sum_{j in row n} V[j] * x[C[j]]

with s[n] = 1 for fp32 values; for int8 values V[j] = q[j] in [-127, 127] and s[n] =
max_j |W[n, j]| / 127 (symmetric per-output-channel scale, q = round(W / s)). Activations,
sums, outputs and bias stay fp32 (weight-only int8: see docs/condensed.md for why the
activations are not quantised on these CPUs).

Kernels (``_cpu.cpp``):
- ``csr_gemv`` (Linear, batch < ``GEMV_MAX_BATCH``): a windowed layout built from the CSR
  arrays (``windowed_ops``): rows 8 at a time (one per ymm lane), inputs 8 at a time; an op
  is one in-register permute of 8 inputs and one FMA for up to 8 weights; the position of
  each weight's input in its window is packed into the value (fp32: its 3 low mantissa bits,
  int8: an int16 word (q << 3) | p);
- ``csr_spmm`` (Linear at larger batches, Conv2d): Y[n, l] over tiles of 48 columns of
  X (in, L) and one pass for the rest (AVX2: 1-7 vectors, the last masked; AVX-512 and the
  portable build: tiles of 32, 16, 8, 4 and 1 columns), parallel over (image, column chunk,
  row); a chunk spans about 128 KiB of X (``CHUNK_BYTES``), at least 48 columns. A 1x1 conv with
  stride 1 and no padding runs on the input itself (X = the (C, H*W) image); other convs on
  F.unfold's columns.

Without the compiled extension, for inputs that require grad or for non-fp32 inputs, the
modules run the dense weight through torch (same values, so the same outputs to rounding).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu
from .layers import KernelCache, conv_padding
from .packing import describe

# Linear batches below this use the windowed gemv kernel, larger ones csr_spmm.
GEMV_MAX_BATCH = 4
# Inputs per window and rows per group of the windowed layout (one ymm register of fp32).
WINDOW = 8
# Bytes of X one csr_spmm column chunk may span (it stays in L2 while every row passes).
CHUNK_BYTES = 1 << 17
# Value dtypes of the sparse modules and their codes in _cpu.cpp.
SPARSE_DTYPES = {torch.float32: 0, torch.int8: 1}
DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "int8": torch.int8}
INT8_MAX = 127


def sparse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float32 or torch.int8, from a dtype or a name ("fp32", "float32", "int8").

    Raises:
        ValueError: for any other dtype or name.
    """
    resolved = DTYPE_NAMES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in SPARSE_DTYPES:
        raise ValueError(
            f"dtype={dtype!r}: sparse (CSR) values are float32 or int8 (names {list(DTYPE_NAMES)})"
        )
    return resolved


def quantize_rows(weight2d: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: (q, s) with s[n] = max_j |W[n, j]| / 127 (1 for a zero row)
    and q = round(W / s) in [-127, 127]; |W - s q| <= s / 2 elementwise."""
    scale = weight2d.abs().amax(dim=1) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(weight2d / scale[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale.float()


def windowed_ops(
    rowptr: Tensor, cols: Tensor, values: Tensor, out: int, fan_in: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """The csr_gemv layout of a CSR matrix: (op_start (groups + 1) int32, op_win (ops,) int32
    x offsets, ops (ops, 8) packed words: float32 for fp32 values, int16 for int8, groups).

    Group g holds rows 8g..8g+7, lane l row 8g + l. For every window w (inputs 8w..8w+7) the
    group gets as many ops as its fullest lane has weights there; the r-th weight of a row in
    the window goes to lane l of op r. Padding lanes hold 0 (value 0, position 0).
    """
    groups = -(-out // WINDOW)
    windows = -(-fan_in // WINDOW)
    counts = rowptr[1:] - rowptr[:-1]
    rows = torch.repeat_interleave(torch.arange(out), counts.long())
    cols = cols.long()
    win = cols // WINDOW
    key = rows * windows + win  # non-decreasing: CSR columns are sorted within a row
    _, run = torch.unique_consecutive(key, return_counts=True)
    starts = torch.cumsum(run, 0) - run
    rank = torch.arange(cols.numel()) - torch.repeat_interleave(starts, run)
    cell = (rows // WINDOW) * windows + win
    per_cell = torch.zeros(groups * windows, dtype=torch.long)
    per_cell.scatter_reduce_(0, cell, rank + 1, "amax")
    first = torch.cumsum(per_cell, 0) - per_cell
    n_ops = int(per_cell.sum())
    op = first[cell] + rank
    position = (cols % WINDOW).to(torch.int32)
    if values.dtype == torch.int8:
        words = (values.to(torch.int32) * WINDOW) | position
        ops = torch.zeros(n_ops, WINDOW, dtype=torch.int16)
        ops[op, rows % WINDOW] = words.to(torch.int16)
    else:
        bits = values.float().contiguous().view(torch.int32)
        ops = torch.zeros(n_ops, WINDOW, dtype=torch.int32)
        ops[op, rows % WINDOW] = (bits & ~(WINDOW - 1)) | position
        ops = ops.view(torch.float32)
    op_win = torch.repeat_interleave(torch.arange(groups * windows) % windows * WINDOW, per_cell)
    op_start = torch.zeros(groups + 1, dtype=torch.int32)
    op_start[1:] = torch.cumsum(per_cell.view(groups, windows).sum(1), 0).to(torch.int32)
    return op_start, op_win.to(torch.int32).contiguous(), ops.contiguous(), groups


def _runnable(x: Tensor) -> bool:
    return (
        cpu.compiled_available()
        and x.is_cpu
        and x.dtype == torch.float32
        and not (x.requires_grad and torch.is_grad_enabled())
    )


class _SparseBase(KernelCache):
    """Buffers ``rowptr`` (out + 1) int32, ``cols`` (nnz) int16 (fan-in <= 32767; read as
    uint16) or int32, ``values`` (nnz) float32 or int8, ``scale`` (out) float32 for int8
    values (else None) and ``bias`` (out) float32 or None."""

    kernel_attr = "_layout"  # the kernels' argument layout, built on the first call

    def __init__(
        self, out_features: int, fan_in: int, nnz: int, *, bias: bool, dtype: torch.dtype | str
    ) -> None:
        super().__init__()
        dtype = sparse_dtype(dtype)
        self.out_features = int(out_features)
        self.fan_in = int(fan_in)
        index = torch.int16 if self.fan_in <= 32767 else torch.int32
        self.register_buffer("rowptr", torch.zeros(self.out_features + 1, dtype=torch.int32))
        self.register_buffer("cols", torch.zeros(nnz, dtype=index))
        self.register_buffer("values", torch.zeros(nnz, dtype=dtype))
        scale = torch.ones(self.out_features) if dtype == torch.int8 else None
        self.register_buffer("scale", scale)
        self.register_buffer("bias", torch.zeros(self.out_features) if bias else None)
        self._layout: tuple | None = None

    @property
    def value_dtype(self) -> torch.dtype:
        return self.values.dtype

    def _kernel_runs(self, x: Tensor) -> bool:
        """The compiled kernels take x and this module's buffers: fp32 or int8 values,
        fp32 scale and bias (not after ``module.double()`` or ``.half()``)."""
        return (
            _runnable(x)
            and self.values.dtype in SPARSE_DTYPES
            and all(t is None or t.dtype == torch.float32 for t in (self.scale, self.bias))
        )

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def set_weight(self, weight2d: Tensor, mask2d: Tensor, bias: Tensor | None) -> None:
        """Stores the active entries of ``weight2d`` (where ``mask2d``) in CSR, quantised to
        int8 per row when this module holds int8 values."""
        weight2d = weight2d.detach().float().cpu()
        mask2d = mask2d.cpu().bool()
        if self.value_dtype == torch.int8:
            q, scale = quantize_rows(weight2d * mask2d)
            self.scale = scale
            dense = q
        else:
            dense = weight2d * mask2d
        rows, cols = mask2d.nonzero(as_tuple=True)
        self.rowptr = torch.cat(
            [torch.zeros(1, dtype=torch.long), torch.cumsum(mask2d.sum(1), 0)]
        ).to(torch.int32)
        self.cols = cols.to(self.cols.dtype).contiguous()
        self.values = dense[rows, cols].contiguous()
        self.bias = None if bias is None else bias.detach().float().cpu().clone()
        self._layout = None

    def dense_weight(self) -> Tensor:
        """The (out, fan_in) fp32 weight the module computes with (int8: s[n] q)."""
        counts = (self.rowptr[1:] - self.rowptr[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.out_features), counts)
        weight = torch.zeros(self.out_features, self.fan_in)
        cols = self.cols.long() & 0xFFFF if self.cols.dtype == torch.int16 else self.cols.long()
        values = self.values.float()
        if self.scale is not None:
            values = values * self.scale[rows]
        weight[rows, cols] = values
        return weight

    def _spmm(self, x: Tensor, ldx: int, x_img: int, y: Tensor, layout: tuple[int, ...]) -> None:
        """csr_spmm into y; layout = (y_img, y_row, y_col, length, n_img)."""
        y_img, y_row, y_col, length, n_img = layout
        chunk = max(48, CHUNK_BYTES // (4 * max(1, self.fan_in)) // 48 * 48)
        cpu._ext.csr_spmm(
            x.data_ptr(), ldx, x_img, self.rowptr.data_ptr(), self.cols.data_ptr(),
            self.cols.element_size(), self.values.data_ptr(), SPARSE_DTYPES[self.value_dtype],
            cpu._ptr(self.scale), cpu._ptr(self.bias), y.data_ptr(), y_img, y_row, y_col,
            length, chunk, n_img, self.out_features, self.nnz, torch.get_num_threads(),
        )  # fmt: skip

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.out_features * self.fan_in)
        return (
            f"out={self.out_features}, fan_in={self.fan_in}, nnz={self.nnz} "
            f"({density:.1%}), values={str(self.value_dtype).removeprefix('torch.')}"
        )


class SparseLinear(_SparseBase):
    """An unstructured sparse ``nn.Linear`` (CSR, fp32 or int8 values)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nnz: int,
        *,
        bias: bool,
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        super().__init__(out_features, in_features, nnz, bias=bias, dtype=dtype)
        self.in_features = int(in_features)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, mask: Tensor | None = None, *, dtype: torch.dtype | str = "fp32"
    ) -> SparseLinear:
        """Sparse copy of ``linear``; ``mask`` defaults to ``weight != 0``."""
        weight = linear.weight.detach()
        mask = (weight != 0) if mask is None else mask.bool()
        module = cls(
            linear.in_features, linear.out_features, int(mask.sum()),
            bias=linear.bias is not None, dtype=dtype,
        )  # fmt: skip
        module.set_weight(weight, mask, linear.bias)
        return module

    def _gemv_layout(self) -> tuple:
        """(kernel arguments after x, ldx, batch and before y; groups, work; the tensors
        the arguments point into), built once."""
        if self._layout is None:
            op_start, op_win, ops, groups = windowed_ops(
                self.rowptr, self.cols, self.values, self.out_features, self.in_features
            )
            args = (
                op_start.data_ptr(), op_win.data_ptr(), ops.data_ptr(),
                SPARSE_DTYPES[self.value_dtype], cpu._ptr(self.scale), cpu._ptr(self.bias),
            )  # fmt: skip
            # one assignment, the tensors with the addresses they keep valid: a concurrent
            # first call never sees arguments whose tensors another call replaced
            self._layout = (args, groups, ops.numel(), (op_start, op_win, ops))
        return self._layout

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input of shape {tuple(x.shape)}: the layer takes {self.in_features} features"
            )
        if not self._kernel_runs(x):
            return F.linear(
                x, self.dense_weight().to(x), None if self.bias is None else self.bias.to(x)
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        batch = x2.shape[0]
        y = torch.empty(batch, self.out_features)
        if batch == 0:
            return y.reshape(*lead, self.out_features)
        if batch < GEMV_MAX_BATCH:
            self._gemv(x2, y, batch)
        else:
            xt = torch.empty(self.in_features, batch)
            cpu._ext.transpose(x2.contiguous().data_ptr(), batch, self.in_features, xt.data_ptr())
            self._spmm(xt, batch, 0, y, (0, 1, self.out_features, batch, 1))
        return y.reshape(*lead, self.out_features)

    def _gemv(self, x2: Tensor, y: Tensor, batch: int) -> None:
        args, groups, work, _ = self._gemv_layout()
        width = -(-self.in_features // WINDOW) * WINDOW
        if width != self.in_features:  # the last window reads 8 inputs: zero-pad x
            x2 = F.pad(x2, (0, width - self.in_features))
        elif not x2.is_contiguous():
            x2 = x2.contiguous()
        cpu._ext.csr_gemv(
            x2.data_ptr(), width, batch, *args, y.data_ptr(), self.out_features,
            self.out_features, groups, work, torch.get_num_threads(),
        )  # fmt: skip

    def to_linear(self) -> nn.Linear:
        """The equivalent dense ``nn.Linear`` (int8 values dequantised)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


class SparseConv2d(_SparseBase):
    """An unstructured sparse ``nn.Conv2d`` (groups 1, zero padding), CSR over the flat
    (c, ky, kx) fan-in; a 1x1 conv with stride 1 and no padding reads its input in place."""

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
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        fan_in = in_channels * math.prod(kernel_size)
        super().__init__(out_channels, fan_in, nnz, bias=bias, dtype=dtype)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.geometry = cpu.ConvGeometry(kernel_size, stride, padding, dilation)

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
        dtype: torch.dtype | str = "fp32",
    ) -> SparseConv2d:
        """Sparse copy of ``conv``; ``mask`` defaults to ``weight != 0``.

        Raises:
            ValueError: naming the layer, for groups != 1 or non-zero padding modes.
        """
        weight = conv.weight.detach()
        if conv.groups != 1:
            raise ValueError(
                f"{describe(name, tuple(weight.shape))} has groups={conv.groups}: the sparse "
                f"conv supports groups=1 only; keep the layer dense"
            )
        mask = (weight != 0) if mask is None else mask.bool()
        module = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
            conv_padding(conv, name), conv.dilation, int(mask.sum()),
            bias=conv.bias is not None, dtype=dtype,
        )  # fmt: skip
        out = conv.out_channels
        module.set_weight(weight.reshape(out, -1), mask.reshape(out, -1), conv.bias)
        return module

    def _pointwise(self) -> bool:
        g = self.geometry
        return g.kernel_size == (1, 1) and g.stride == (1, 1) and g.padding == (0, 0)

    def forward(self, x: Tensor) -> Tensor:
        g = self.geometry
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input of shape {tuple(x.shape)}: the layer takes (N, {self.in_channels}, H, W)"
            )
        if not self._kernel_runs(x):
            weight = self.dense_weight().view(self.weight_shape).to(x)
            bias = None if self.bias is None else self.bias.to(x)
            return F.conv2d(x, weight, bias, g.stride, g.padding, g.dilation)
        n, _, h, w = x.shape
        oh, ow = g.output_size(h, w)
        length = oh * ow
        y = torch.empty(n, self.out_channels, oh, ow)
        if n == 0 or length == 0:
            return y
        if self._pointwise():
            cols = x.contiguous()
        else:
            cols = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride).contiguous()
        self._spmm(
            cols,
            length,
            self.fan_in * length,
            y,
            (self.out_channels * length, length, 1, length, n),
        )
        return y

    def to_conv(self) -> nn.Conv2d:
        """The equivalent dense ``nn.Conv2d`` (int8 values dequantised)."""
        g = self.geometry
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, g.kernel_size, stride=g.stride,
            padding=g.padding, dilation=g.dilation, bias=self.bias is not None,
        )  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight().view(self.weight_shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


SPARSE_TYPES = (SparseLinear, SparseConv2d)


def int8_bound(weight2d: Tensor, x: Tensor) -> Tensor:
    """Per-output bound of an int8 layer's error against fp32 weights for input rows x
    (B, fan_in): |y_int8 - y| <= (s[n] / 2) sum_j |x[j]| over the row's inputs, with s[n] =
    max_j |W[n, j]| / 127 (each weight moves by at most s[n] / 2); plus fp32 rounding."""
    _, scale = quantize_rows(weight2d)
    support = (weight2d != 0).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return (x.abs() @ support.t()) * (scale / 2)


__all__ = [
    "SPARSE_TYPES",
    "SparseConv2d",
    "SparseLinear",
    "int8_bound",
    "quantize_rows",
    "sparse_dtype",
    "windowed_ops",
]
