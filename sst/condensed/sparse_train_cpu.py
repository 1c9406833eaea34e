"""The compiled training kernels (``_sparse_train.cpp``) behind ``sparse_train.py``, as
autograd functions.

Linear: x (B, in) is transposed once to X (in, B), in blocks of ``SPMM_CHUNK`` batch columns
(``_to_blocks``: each block is one "image" of the kernels), so that each kept weight touches
a contiguous run of numbers; the forward product computes Y^T (out, B) and the input gradient
G_x^T (in, B) from g^T = dL/dy^T (out, B) over the transposed structure, both stored back in
the batch-major layout (the kernel writes 8 rows at a time, so each output row gets 8
contiguous numbers); the weight gradient dV[p] = g^T[o] . X[i] (a dot product of length B,
summed over the blocks) at each kept (o, i).
Conv2d: im2col's columns (B, C * kh * kw, L), F.unfold's layout, already hold one image's
batch along the contiguous axis, so the same kernels run per image with no transpose; the
input gradient's columns go back through col2im (F.fold's sum). im2col and col2im are
compiled too (torch's CPU unfold / fold cost more than the sparse products here).
"""

from __future__ import annotations

import os
import threading

import torch
from torch import Tensor

from .sparse_train_layout import TrainLayout

try:
    from . import _sparse_train as _ext
except ImportError:  # not built (no compiler at install time): the fallback runs
    _ext = None

# Set SST_SPARSE_TRAIN_FALLBACK=1 (read at import) or this flag to run the PyTorch fallback.
FORCE_FALLBACK = os.environ.get("SST_SPARSE_TRAIN_FALLBACK", "") == "1"
# The kernels' dtype codes.
DTYPES = {torch.float32: 0, torch.float64: 1}
# Columns of X per spmm work item: a block of X that stays in cache while the rows pass.
# The transposed product takes whole rows (0): its rows (inputs) hold few weights each, and
# every extra column block re-reads the structure (measured 1.6x faster at batch 256).
SPMM_CHUNK = 64
SPMM_CHUNK_TRANSPOSED = 0


# Per-thread scratch buffers for the conv columns (see ``_workspace``).
_scratch = threading.local()


def compiled_available() -> bool:
    """True when the C++ training kernels are built and not disabled (``FORCE_FALLBACK``)."""
    return _ext is not None and not FORCE_FALLBACK


def kernel_info() -> dict[str, object]:
    """What the compiled kernels run with (for benchmark headers)."""
    if _ext is None:
        return {"compiled": False}
    return {"compiled": True, "isa": _ext.isa(), "openmp": _ext.openmp()}


def runnable(x: Tensor, values: Tensor, bias: Tensor | None) -> bool:
    """Whether the compiled kernels take these tensors (CPU, float32 or float64, one dtype)."""
    tensors = [x, values] if bias is None else [x, values, bias]
    return (
        compiled_available()
        and all(t.device.type == "cpu" and t.dtype == x.dtype for t in tensors)
        and x.dtype in DTYPES
    )


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _threads() -> int:
    return torch.get_num_threads()


def _spmm(
    layout: TrainLayout,
    transposed: bool,
    values: Tensor,
    bias: Tensor | None,
    x: Tensor,
    y: Tensor,
    y_rows_last: bool = False,
) -> None:
    """Per image, y = bias + A x with x (cols, N): A = W (rows = outputs, ``values`` in the
    layout's order) or, with ``transposed``, W^T (rows = inputs, ``values`` in CSC order:
    ``_csc_values``). x is (N_img, cols, N) or 2-D; y is (N_img, rows, N), or with
    ``y_rows_last`` (N_img * N, rows): the product stored transposed, image after image."""
    x3 = x.view(-1, *x.shape[-2:])
    n_img, n = x3.shape[0], x3.shape[2]
    if transposed:
        ptr, idx, n_rows = layout.colptr, layout.row, layout.in_features
    else:
        ptr, idx, n_rows = layout.rowptr, layout.col, layout.out_features
    if y_rows_last:  # y[img * N + l, r] at (img * N + l) * rows + r
        y_img, y_row, y_col = n * n_rows, 1, n_rows
    else:
        y_img, y_row, y_col = n_rows * n, n, 1
    _ext.spmm(
        DTYPES[values.dtype], ptr.data_ptr(), idx.data_ptr(), values.data_ptr(), _ptr(bias),
        x3.data_ptr(), n, x3.shape[1] * n, y.data_ptr(), y_img, y_row, y_col, n, n_img, n_rows,
        SPMM_CHUNK_TRANSPOSED if transposed else SPMM_CHUNK, layout.nnz, _threads(),
    )  # fmt: skip


def _permuted(values: Tensor, perm: Tensor) -> Tensor:
    """out[i] = values[perm[i]]: the layout's values moved between CSR and CSC order."""
    out = torch.empty_like(values)
    _ext.gather(
        DTYPES[values.dtype], values.data_ptr(), perm.data_ptr(), perm.numel(), out.data_ptr(),
        _threads(),
    )  # fmt: skip
    return out


def _csc_values(layout: TrainLayout, values: Tensor) -> Tensor:
    """The values in the transposed structure's order (one gather per backward: cheaper than
    an indirect load per weight and column block in the product)."""
    return _permuted(values, layout.perm)


def _sddmm(layout: TrainLayout, g: Tensor, x: Tensor) -> Tensor:
    """dV[p] = sum over images of g[o] . x[i] at each kept (o, i); g (.., out, N), x (.., in, N).

    Runs by output rows (reading rows of x at random) or, when x has more rows than g and
    there are several images, by input columns (reading rows of g, the smaller operand, at
    random; the sums come in CSC order and are gathered back once for all images). Measured
    at 3072 -> 768: by input columns 1.06-1.14x faster at batch 256 (4 images), by output
    rows 1.05-1.5x faster at batch 64 (1 image), where the gather back is not shared."""
    g3, x3 = g.view(-1, *g.shape[-2:]), x.view(-1, *x.shape[-2:])
    n_img, n = g3.shape[0], g3.shape[2]
    by_input = layout.in_features > layout.out_features and n_img > 1
    if by_input:
        ptr, idx, rows, a, b = layout.colptr, layout.row, layout.in_features, x3, g3
    else:
        ptr, idx, rows, a, b = layout.rowptr, layout.col, layout.out_features, g3, x3
    out = torch.empty(layout.nnz, dtype=g.dtype)
    _ext.sddmm(
        DTYPES[g.dtype], ptr.data_ptr(), idx.data_ptr(), a.data_ptr(), n, a.shape[1] * n,
        b.data_ptr(), n, b.shape[1] * n, out.data_ptr(), n, n_img, rows, layout.nnz, _threads(),
    )  # fmt: skip
    return _permuted(out, layout.perm_inv) if by_input else out


def _to_blocks(a: Tensor) -> Tensor:
    """(B, cols) -> its transpose in column blocks, (B / c, cols, c) with c = ``SPMM_CHUNK``
    when c divides B and B > c, else (1, cols, B). Each block of c batch columns is then
    contiguous: the kernels' random row reads stay within one block's memory instead of
    striding over all B columns (measured 8-27% faster products at batch 256)."""
    rows, cols = a.shape
    c = SPMM_CHUNK if rows > SPMM_CHUNK and rows % SPMM_CHUNK == 0 else rows
    out = torch.empty(rows // c, cols, c, dtype=a.dtype)
    _ext.transpose(DTYPES[a.dtype], a.data_ptr(), rows // c, c, cols, out.data_ptr(), _threads())
    return out


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, layout: TrainLayout):
        x, values = x.contiguous(), values.detach().contiguous()
        bias = None if bias is None else bias.detach().contiguous()
        xb = _to_blocks(x)
        y = torch.empty(x.shape[0], layout.out_features, dtype=x.dtype)
        _spmm(layout, False, values, bias, xb, y, y_rows_last=True)
        ctx.layout = layout
        ctx.save_for_backward(xb if ctx.needs_input_grad[1] else None, values)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        xb, values = ctx.saved_tensors
        layout: TrainLayout = ctx.layout
        gy = gy.contiguous()
        gb_blocks = _to_blocks(gy)
        gx = gv = gb = None
        if ctx.needs_input_grad[2]:  # while gy is still in cache from the transpose
            gb = gy.sum(0)
        if ctx.needs_input_grad[0]:
            gx = torch.empty(gy.shape[0], layout.in_features, dtype=gy.dtype)
            _spmm(layout, True, _csc_values(layout, values), None, gb_blocks, gx, y_rows_last=True)
        if ctx.needs_input_grad[1]:
            gv = _sddmm(layout, gb_blocks, xb)
        return gx, gv, gb, None


def linear(x: Tensor, values: Tensor, layout: TrainLayout, bias: Tensor | None) -> Tensor:
    """``sparse_train.sparse_linear`` on the compiled kernels (see ``runnable``)."""
    lead = x.shape[:-1]
    y = _Linear.apply(x.reshape(-1, layout.in_features), values, bias, layout)
    return y.view(*lead, layout.out_features)


Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]


def output_size(size: tuple[int, int], geometry: Geometry) -> tuple[int, int]:
    """(oh, ow) of a conv on an input of spatial ``size``: per axis
    (size + 2 padding - dilation (kernel - 1) - 1) // stride + 1."""
    stride, padding, dilation, kernel = geometry
    oh, ow = (
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, s, p, d, k in zip(size, stride, padding, dilation, kernel, strict=True)
    )
    return oh, ow


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A reusable buffer of this thread: a conv's columns are tens of MB, and a fresh block of
    that size comes from the OS as untouched pages, whose first writes cost as much as the
    sparse product (measured 37 ms per 38 MB allocation on the layer3 conv)."""
    numel = 1
    for n in shape:
        numel *= n
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buf = buffers.get((name, dtype))
    if buf is None or buf.numel() < numel:
        buf = buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def release_workspace() -> None:
    """Frees this thread's conv column buffers (they are kept for the next call)."""
    _scratch.__dict__.pop("buffers", None)


def _im2col(
    x: Tensor, cols: Tensor, geometry: Geometry, out_size: tuple[int, int], back: bool
) -> None:
    """cols = F.unfold(x) (``back`` False) or x = F.fold(cols) (``back`` True), in place:
    several times faster than torch's CPU unfold / fold."""
    (sy, sx), (py, px), (dy, dx), (kh, kw) = geometry
    b, c, h, w = x.shape
    _ext.im2col(
        DTYPES[x.dtype], int(back), x.data_ptr(), cols.data_ptr(), b, c, h, w, kh, kw, sy, sx,
        py, px, dy, dx, *out_size, _threads(),
    )  # fmt: skip


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, layout: TrainLayout, geometry: Geometry):
        values = values.detach().contiguous()
        bias = None if bias is None else bias.detach().contiguous()
        x = x.detach().contiguous()
        oh, ow = output_size(x.shape[-2:], geometry)
        cols = _workspace("cols", (x.shape[0], layout.in_features, oh * ow), x.dtype)
        _im2col(x, cols, geometry, (oh, ow), back=False)
        y = torch.empty(x.shape[0], layout.out_features, oh * ow, dtype=x.dtype)
        _spmm(layout, False, values, bias, cols, y)
        ctx.layout, ctx.geometry, ctx.shape, ctx.out_size = layout, geometry, x.shape, (oh, ow)
        # x, not its columns: recomputing them in backward costs less than keeping them
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, values)
        return y.view(x.shape[0], layout.out_features, oh, ow)

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, values = ctx.saved_tensors
        layout: TrainLayout = ctx.layout
        g = gy.contiguous().view(gy.shape[0], gy.shape[1], -1)
        gx = gv = gb = None
        if ctx.needs_input_grad[0]:
            gcols = _workspace("cols", (g.shape[0], layout.in_features, g.shape[2]), g.dtype)
            _spmm(layout, True, _csc_values(layout, values), None, g, gcols)
            gx = torch.empty(ctx.shape, dtype=g.dtype)
            _im2col(gx, gcols, ctx.geometry, ctx.out_size, back=True)
        if ctx.needs_input_grad[1]:
            cols = _workspace("cols", (g.shape[0], layout.in_features, g.shape[2]), g.dtype)
            _im2col(x, cols, ctx.geometry, ctx.out_size, back=False)
            gv = _sddmm(layout, g, cols)
        if ctx.needs_input_grad[2]:
            gb = g.sum((0, 2))
        return gx, gv, gb, None, None


def conv2d(
    x: Tensor, values: Tensor, layout: TrainLayout, bias: Tensor | None, geometry: Geometry
) -> Tensor:
    """``sparse_train.sparse_conv2d`` on the compiled kernels: geometry = (stride, padding,
    dilation, kernel_size), each a pair."""
    return _Conv2d.apply(x, values, bias, layout, geometry)
