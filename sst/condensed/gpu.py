"""GPU execution of condensed layers: a Triton kernel for the condensed product (the 2:4
path through PyTorch's semi-structured tensors is ``sst.condensed.semi_structured``).

Triton is imported only when a kernel is first built, so this module imports on CPU-only
machines. The condensed kernel computes, for a block of batch rows and a block of live
output neurons (Lasby et al., ICLR 2024),

    y[b, row(n)] = bias[row(n)] + sum_j V[n, j] * x[b, I[n, j]],

gathering x through the index block and reducing along j in fp32.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .cpu import linear_reference
from .packing import Condensed


def triton_available() -> bool:
    """True when CUDA is present and Triton imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def condensed_kernel(
        x_ptr, v_ptr, i_ptr, rows_ptr, b_ptr, y_ptr,
        batch, n_live, k, ldx, ldy,
        HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
        mask_n = offs_n < n_live
        mask_b = offs_b < batch
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, k, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_nk = mask_n[:, None] & (offs_k < k)[None, :]
            at = offs_n[:, None] * k + offs_k[None, :]
            idx = tl.load(i_ptr + at, mask=mask_nk, other=0).to(tl.int64)
            val = tl.load(v_ptr + at, mask=mask_nk, other=0.0).to(tl.float32)
            xs = tl.load(
                x_ptr + offs_b[:, None, None] * ldx + idx[None, :, :],
                mask=mask_b[:, None, None] & mask_nk[None, :, :],
                other=0.0,
            ).to(tl.float32)
            acc += tl.sum(xs * val[None, :, :], axis=2)
        rows = offs_n
        if HAS_ROWS:
            rows = tl.load(rows_ptr + offs_n, mask=mask_n, other=0)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(
            y_ptr + offs_b[:, None] * ldy + rows[None, :],
            acc.to(y_ptr.dtype.element_ty),
            mask=mask_b[:, None] & mask_n[None, :],
        )

    return condensed_kernel


def _blocks(batch: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_N, BLOCK_K): a small batch block for online inference, a register
    budget of about 8k gathered elements per program."""
    block_b = 2
    while block_b < min(batch, 16):
        block_b *= 2
    block_k = 64 if block_b <= 2 else 32 if block_b <= 8 else 16
    return block_b, 32, block_k


def condensed_linear(x: Tensor, matrix: Condensed, bias: Tensor | None) -> Tensor:
    """The condensed Linear on a CUDA input: the Triton kernel, or the PyTorch fallback when
    Triton is missing or autograd needs the graph."""
    if not triton_available() or (torch.is_grad_enabled() and x.requires_grad):
        return linear_reference(x, matrix, bias)
    return triton_linear(x, matrix, bias)


def triton_linear(x: Tensor, matrix: Condensed, bias: Tensor | None) -> Tensor:
    """Launches the Triton kernel (inputs on one device; x of any float dtype)."""
    m = matrix
    lead = x.shape[:-1]
    x2 = x.reshape(-1, m.in_features).contiguous()
    batch = x2.shape[0]
    if m.rows is None or m.n_live == m.out_features:
        y = torch.empty(batch, m.out_features, device=x.device, dtype=x.dtype)
    elif bias is None:
        y = torch.zeros(batch, m.out_features, device=x.device, dtype=x.dtype)
    else:
        y = torch.empty(batch, m.out_features, device=x.device, dtype=x.dtype)
        y.copy_(bias.to(x.dtype).expand(batch, m.out_features))
    if batch and m.n_live and m.k:
        block_b, block_n, block_k = _blocks(batch)
        grid = (-(-m.n_live // block_n), -(-batch // block_b))
        values = m.values.to(x.device).contiguous()
        indices = m.indices.to(x.device).contiguous()
        rows = m.rows.to(x.device) if m.rows is not None else values
        b = bias.to(x.device) if bias is not None else values
        _kernel()[grid](
            x2, values, indices, rows, b, y,
            batch, m.n_live, m.k, x2.stride(0), y.stride(0),
            HAS_ROWS=m.rows is not None, HAS_BIAS=bias is not None,
            BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_K=block_k,
        )  # fmt: skip
    elif m.n_live and not m.k and bias is not None:
        y[:, m.live_rows().to(x.device)] = bias.to(x.dtype)[m.live_rows().to(x.device)]
    return y.reshape(*lead, m.out_features)
