"""CPU execution of condensed layers: the compiled kernels (``_cpu.cpp``) and the
pure-PyTorch fallback that gives the same outputs when the extension is not built.

Linear, y[b, n] = bias[n] + sum_j V[n, j] * x[b, I[n, j]] for the live rows n:
- batch < ``SPMM_MIN_BATCH``: the windowed AVX-512 kernel (``windowed.py``) when the CPU has
  AVX-512 and the layout's lanes are well filled, else scalar gathers (``gemv``);
- larger batches: ``spmm`` on x transposed to (in, B), vectorised along the batch.

Conv2d (groups 1) runs ``spmm`` in one of two modes (``ConvKernel``): "direct" on the
zero-padded input (no im2col): for stride s the padded input is split into s x s phase
planes, so that every weight (c, ky, kx) reads a contiguous run of its plane, at
``tapoff[c, ky, kx]`` plus oy * Wq + ox; outputs are computed at the phase plane's width Wq,
and the Wq - OW columns past the output's width are cropped by a view. "unfold" runs on
F.unfold's columns, which is faster on small feature maps.

Values may be float32 or bfloat16 (``VALUE_TYPES``): the kernels convert bf16 to fp32 as
they load it (a 16-bit shift) and compute in fp32; inputs, outputs and bias stay fp32. The
fallback upcasts the values once per call, so both compute with the same rounded weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .packing import Condensed
from .windowed import Windowed, build_windowed

try:
    from . import _cpu as _ext
except ImportError:  # not built (no compiler at install time): the fallback runs
    _ext = None

# Batches from this size use the batch-vectorised spmm kernel (measured crossover, 3072->768).
SPMM_MIN_BATCH = 4
# The windowed kernel is used when at least this fraction of its lanes hold weights; one of
# its ops costs about 3 scalar multiply-adds (scripts/bench_infer.py --kernels).
WINDOWED_MIN_EFFICIENCY = 0.2
# Columns per spmm work item: keeps a block of x in cache while every row passes over it.
LINEAR_CHUNK = 64
CONV_CHUNK = 512
# Convs whose output has at most this many positions per image run on unfolded input.
UNFOLD_MAX_OUTPUTS = 256
# Elements of the fallback's gathered (batch, rows, k[, L]) block.
FALLBACK_BLOCK = 1 << 22
# Value dtypes the compiled kernels read, and their codes in _cpu.cpp; others run the fallback.
VALUE_TYPES = {torch.float32: 0, torch.bfloat16: 1}


# Set SST_CONDENSED_FALLBACK=1 (read at import) or this flag to run the PyTorch fallback.
FORCE_FALLBACK = os.environ.get("SST_CONDENSED_FALLBACK", "") == "1"


def compiled_available() -> bool:
    """True when the C++ kernels are built and not disabled (``FORCE_FALLBACK``)."""
    return _ext is not None and not FORCE_FALLBACK


def kernel_info() -> dict[str, object]:
    """What the compiled kernels run with (for benchmark headers)."""
    if _ext is None:
        return {"compiled": False}
    return {
        "compiled": True,
        "isa": _ext.isa(),
        "openmp": _ext.openmp(),
        "windowed": _ext.has_perm(),
    }


def _ptr(tensor: Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def _runnable(x: Tensor, matrix: Condensed) -> bool:
    return (
        _ext is not None
        and not FORCE_FALLBACK
        and x.is_cpu
        and x.dtype == torch.float32
        and matrix.values.dtype in VALUE_TYPES
        and not (x.requires_grad and torch.is_grad_enabled())
    )


def _value_type(matrix: Condensed) -> int:
    """The kernels' code of the matrix's value dtype (0 when it has none: never run)."""
    return VALUE_TYPES.get(matrix.values.dtype, 0)


def _output(batch_shape: Sequence[int], out: int, matrix: Condensed, bias: Tensor | None) -> Tensor:
    """The output buffer; rows the kernel does not write (ablated neurons) hold their bias."""
    if matrix.rows is None or matrix.n_live == out:
        return torch.empty(*batch_shape, out)
    if bias is None:
        return torch.zeros(*batch_shape, out)
    return bias.detach().float().expand(*batch_shape, out).clone()


class LinearKernel:
    """Runs one condensed Linear; builds the windowed layout on first small-batch use. The
    tensors' addresses are read once: the kernel must be rebuilt if they change (the
    modules in ``layers.py`` do so on ``.to()`` and ``load_state_dict``)."""

    def __init__(self, matrix: Condensed, bias: Tensor | None) -> None:
        self.matrix = m = matrix
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self._windowed: Windowed | None = None
        self._windowed_checked = False
        self._perm_args: tuple = ()
        # gemv / spmm arguments after x: values, value type, indices, index bytes, k, rows, bias
        self._matrix_args = (
            m.values.data_ptr(), _value_type(m), m.indices.data_ptr(), m.indices.element_size(),
            m.k, _ptr(m.rows), _ptr(self.bias),
        )  # fmt: skip

    def windowed(self) -> Windowed | None:
        """The windowed layout when the CPU runs it and it is efficient enough."""
        if not self._windowed_checked:
            # Built locally and published arguments first: a concurrent first call builds its
            # own copy or sees both attributes set, never a layout without its arguments.
            if _ext is not None and _ext.has_perm() and self.matrix.k > 0:
                layout = build_windowed(self.matrix, self.bias)
                if layout.efficiency >= WINDOWED_MIN_EFFICIENCY:
                    self._perm_args = (
                        layout.cnt.data_ptr(), layout.windows, layout.offset.data_ptr(),
                        layout.pos.data_ptr(), layout.values.data_ptr(), _value_type(self.matrix),
                        layout.bias.data_ptr(), layout.rows.data_ptr(),
                    )  # fmt: skip
                    self._windowed = layout
            self._windowed_checked = True
        return self._windowed

    def __call__(self, x: Tensor) -> Tensor:
        m = self.matrix
        if not _runnable(x, m):
            return linear_reference(x, m, self.bias)
        flat = x.dim() == 2 and x.is_contiguous()
        x2 = x if flat else x.reshape(-1, m.in_features).contiguous()
        batch = x2.shape[0]
        y = _output((batch,), m.out_features, m, self.bias)
        if batch and m.n_live:
            self._run(x2, y, batch)
        return y if x2 is x else y.reshape(*x.shape[:-1], m.out_features)

    def _run(self, x2: Tensor, y: Tensor, batch: int) -> None:
        m, threads = self.matrix, torch.get_num_threads()
        if batch < SPMM_MIN_BATCH:
            layout = self.windowed()
            if layout is not None:
                _ext.perm(
                    x2.data_ptr(), m.in_features, batch, m.in_features, *self._perm_args,
                    y.data_ptr(), m.out_features, layout.groups, layout.work, threads,
                )  # fmt: skip
            else:
                _ext.gemv(
                    x2.data_ptr(), m.in_features, batch, *self._matrix_args, y.data_ptr(),
                    m.out_features, m.n_live, threads,
                )  # fmt: skip
        else:
            xt = torch.empty(m.in_features, batch)
            _ext.transpose(x2.data_ptr(), batch, m.in_features, xt.data_ptr())
            _ext.spmm(
                xt.data_ptr(), batch, 0, 0, *self._matrix_args, y.data_ptr(), 0, 1,
                m.out_features, batch, LINEAR_CHUNK, 1, m.n_live, threads,
            )  # fmt: skip


class ConvGeometry:
    """Kernel size, stride, padding and dilation of a 2-D convolution (each a pair)."""

    def __init__(
        self,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
    ) -> None:
        self.kernel_size = tuple(int(v) for v in kernel_size)
        self.stride = tuple(int(v) for v in stride)
        self.padding = tuple(int(v) for v in padding)
        self.dilation = tuple(int(v) for v in dilation)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel_size, self.stride, self.padding, self.dilation,
        )  # fmt: skip
        return (
            (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
            (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1,
        )

    def planes(self, height: int, width: int) -> tuple[int, int]:
        """(Hq, Wq): the size of one phase plane of the padded input."""
        (sh, sw), (ph, pw) = self.stride, self.padding
        return -(-(height + 2 * ph) // sh), -(-(width + 2 * pw) // sw)

    def tap_offsets(self, channels: int, height: int, width: int) -> Tensor:
        """int32 offset, in the phase-plane input, of every (c, ky, kx) in flat fan-in order."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        hq, wq = self.planes(height, width)
        c = torch.arange(channels).view(-1, 1, 1)
        dy = (torch.arange(kh) * dh).view(1, -1, 1)
        dx = (torch.arange(kw) * dw).view(1, 1, -1)
        plane = (c * sh + dy % sh) * sw + dx % sw
        offset = plane * (hq * wq) + (dy // sh) * wq + dx // sw
        if int(offset.max()) >= 2**31:
            raise ValueError("input too large for the condensed conv kernel's int32 offsets")
        return offset.flatten().to(torch.int32)


class ConvKernel:
    """Runs one condensed Conv2d (groups 1) on (N, C, H, W) float32 input.

    ``mode`` "direct" reads the padded input in place (see the module docstring); "unfold"
    runs on F.unfold's columns (im2col), which costs a copy of about k_h * k_w times the
    input but wastes no columns and needs no offset table: it wins on small feature maps.
    "auto" takes "unfold" when an image's output has at most ``UNFOLD_MAX_OUTPUTS``
    positions, "direct" otherwise.
    """

    MODES = ("auto", "direct", "unfold")

    def __init__(
        self, matrix: Condensed, bias: Tensor | None, geometry: ConvGeometry, mode: str = "auto"
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r} is unknown: allowed values are {self.MODES}")
        self.matrix = matrix
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.geometry = geometry
        self.mode = mode
        self._offsets: dict[tuple[int, int, int], Tensor] = {}

    def __call__(self, x: Tensor) -> Tensor:
        m, g = self.matrix, self.geometry
        if not _runnable(x, m):
            return conv2d_reference(x, m, self.bias, g)
        oh, ow = g.output_size(x.shape[2], x.shape[3])
        mode = self.mode
        if mode == "auto":
            mode = "unfold" if oh * ow <= UNFOLD_MAX_OUTPUTS else "direct"
        if mode == "unfold":
            return self._unfold(x, oh, ow)
        return self._direct(x, oh, ow)

    def _buffer(self, n: int, length: int) -> Tensor:
        m = self.matrix
        if m.rows is None or m.n_live == m.out_features:
            return torch.empty(n, m.out_features, length)
        if self.bias is None:
            return torch.zeros(n, m.out_features, length)
        return torch.empty(n, m.out_features, length).copy_(
            self.bias.view(1, -1, 1).expand(n, -1, length)
        )

    def _spmm(self, x: Tensor, ldx: int, offsets: Tensor | None, y: Tensor, length: int) -> None:
        m = self.matrix
        n, rows, stride = y.shape[0], y.shape[1], y.shape[2]
        if m.n_live == 0 or n == 0:
            return
        _ext.spmm(
            x.data_ptr(), ldx, x[0].numel(), _ptr(offsets), m.values.data_ptr(), _value_type(m),
            m.indices.data_ptr(), m.indices.element_size(), m.k, _ptr(m.rows), _ptr(self.bias),
            y.data_ptr(), rows * stride, stride, 1, length, CONV_CHUNK, n, m.n_live,
            torch.get_num_threads(),
        )  # fmt: skip

    def _unfold(self, x: Tensor, oh: int, ow: int) -> Tensor:
        g = self.geometry
        cols = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride).contiguous()
        y = self._buffer(x.shape[0], oh * ow)
        self._spmm(cols, oh * ow, None, y, oh * ow)
        return y.view(x.shape[0], -1, oh, ow)

    def _direct(self, x: Tensor, oh: int, ow: int) -> Tensor:
        g = self.geometry
        n, c, h, w = x.shape
        hq, wq = g.planes(h, w)
        (sh, sw), (ph, pw) = g.stride, g.padding
        if (hq * sh, wq * sw) != (h, w) or (ph, pw) != (0, 0):
            x = F.pad(x, (pw, wq * sw - w - pw, ph, hq * sh - h - ph))
        elif not x.is_contiguous():
            x = x.contiguous()
        if (sh, sw) != (1, 1):
            x = x.view(n, c, hq, sh, wq, sw).permute(0, 1, 3, 5, 2, 4).contiguous()
        key = (c, h, w)
        offsets = self._offsets.get(key)
        if offsets is None:
            offsets = self._offsets[key] = g.tap_offsets(c, h, w)
        y = self._buffer(n, oh * wq)
        self._spmm(x, 0, offsets, y, (oh - 1) * wq + ow)
        return y.view(n, -1, oh, wq)[..., :ow]


# ------------------------------------------------------------------------------ fallback
def linear_reference(x: Tensor, matrix: Condensed, bias: Tensor | None) -> Tensor:
    """Pure-PyTorch condensed Linear (gather + batched reduction), autograd-capable; values
    are cast to x's dtype (bf16 values to an fp32 input: exactly)."""
    m = matrix
    lead = x.shape[:-1]
    x2 = x.reshape(-1, m.in_features)
    batch = x2.shape[0]
    values = m.values.to(x.dtype)
    index = m.indices.long()
    if bias is None:
        y = x2.new_zeros(batch, m.out_features)
    else:
        y = bias.to(x.dtype).expand(batch, m.out_features).clone()
    step = max(1, FALLBACK_BLOCK // max(1, batch * m.k))
    live = m.live_rows().to(x.device)
    parts = []
    for r0 in range(0, m.n_live, step):
        gathered = x2[:, index[r0 : r0 + step]]  # (batch, rows, k)
        parts.append(torch.einsum("brk,rk->br", gathered, values[r0 : r0 + step]))
    if parts:
        y = y.index_add(1, live, torch.cat(parts, dim=1))
    return y.reshape(*lead, m.out_features)


def conv2d_reference(
    x: Tensor, matrix: Condensed, bias: Tensor | None, geometry: ConvGeometry
) -> Tensor:
    """Pure-PyTorch condensed Conv2d: unfold (im2col), gather the k rows of every live output
    channel, reduce; autograd-capable."""
    m, g = matrix, geometry
    n, _, h, w = x.shape
    oh, ow = g.output_size(h, w)
    cols = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride)  # (n, fan_in, L)
    length = cols.shape[-1]
    values = m.values.to(x.dtype)
    index = m.indices.long()
    if bias is None:
        y = x.new_zeros(n, m.out_features, length)
    else:
        y = bias.to(x.dtype).view(1, -1, 1).expand(n, m.out_features, length).clone()
    step = max(1, FALLBACK_BLOCK // max(1, n * m.k * length))
    parts = []
    for r0 in range(0, m.n_live, step):
        gathered = cols[:, index[r0 : r0 + step]]  # (n, rows, k, L)
        parts.append(torch.einsum("nrkl,rk->nrl", gathered, values[r0 : r0 + step]))
    if parts:
        y = y.index_add(1, m.live_rows().to(x.device), torch.cat(parts, dim=1))
    return y.view(n, m.out_features, oh, ow)


def read_bytes(matrix: Condensed) -> int:
    """Bytes of weights and indices one product reads (for bandwidth bounds)."""
    rows = 0 if matrix.rows is None else matrix.rows.numel() * 4
    values = matrix.values.numel() * matrix.values.element_size()
    return values + matrix.indices.numel() * matrix.indices.element_size() + rows


def windowed_bytes(layout: Windowed) -> int:
    """Bytes the windowed kernel reads (padded values and positions, counts, offsets)."""
    return (
        layout.values.numel() * layout.values.element_size()
        + layout.pos.numel()
        + layout.cnt.numel()
        + layout.offset.numel() * 8
        + layout.rows.numel() * 8
    )


__all__ = [
    "ConvGeometry",
    "ConvKernel",
    "LinearKernel",
    "compiled_available",
    "conv2d_reference",
    "kernel_info",
    "linear_reference",
]
