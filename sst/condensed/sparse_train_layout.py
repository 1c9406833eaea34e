"""The positions of a masked layer's kept weights, for training in condensed form
(``sparse_train.py``): row-major values, CSR row pointers over all rows, and the transposed
(CSC) structure for the input gradient, built once per mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("auto", "fan_in", "csr")


@dataclass(frozen=True, eq=False)
class TrainLayout:
    """Positions of the kept weights of one masked layer (see the module docstring).

    ``flat``: (nnz,) int64 positions o * in + i, in row-major order (the values' order), on
    the mask's device. ``rowptr`` (out + 1,) and ``col`` (nnz,): int32 CSR over all rows.
    ``colptr`` (in + 1,), ``row`` (nnz,) and ``perm`` (nnz,): int32 CSC, where entry p of
    the CSC order is value ``perm[p]``; ``perm_inv`` (nnz,): value q is CSC entry
    ``perm_inv[q]``. ``k``: the kept inputs per non-empty row ("fan_in"),
    else None; ``live``: int64 indices of the non-empty rows.
    """

    kind: str
    out_features: int
    in_features: int
    nnz: int
    k: int | None
    flat: Tensor
    live: Tensor
    rowptr: Tensor
    col: Tensor
    colptr: Tensor
    row: Tensor
    perm: Tensor
    perm_inv: Tensor

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.out_features * self.in_features)

    def mask(self) -> Tensor:
        """The 2-D 0/1 float mask (out, in) this layout was built from."""
        m = torch.zeros(self.out_features * self.in_features, device=self.flat.device)
        m[self.flat] = 1.0
        return m.view(self.out_features, self.in_features)


def build_layout(mask: Tensor, kind: str = "auto") -> TrainLayout:
    """The layout of ``mask`` (out, in) or a conv mask (out, C, kh, kw), nonzero = kept.

    ``kind``: "auto" (fan_in when every non-empty row keeps the same count and at least one
    weight is kept, else csr), "fan_in" (an error if the counts differ) or "csr".
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if mask.dim() not in (2, 4):
        raise ValueError(f"mask must be 2-D (out, in) or 4-D (out, C, kh, kw), got {mask.dim()}-D")
    m = (mask.detach().reshape(mask.shape[0], -1) != 0).cpu()
    out, inp = m.shape
    counts = m.sum(1)
    live = torch.nonzero(counts).flatten()
    live_counts = counts[live].unique()
    uniform = live_counts.numel() == 1
    if kind == "fan_in" and not uniform:
        raise ValueError(
            f"kind='fan_in' needs the same kept count in every non-empty row, got counts "
            f"{live_counts.tolist()[:8]}; use kind='csr' or 'auto'"
        )
    chosen = "fan_in" if (kind == "fan_in" or (kind == "auto" and uniform)) else "csr"
    if max(out, inp) >= 2**31 or int(counts.sum()) >= 2**31:
        raise ValueError(f"layer too large for int32 indices: {out} x {inp}")
    pos = torch.nonzero(m)  # row-major: sorted by (o, i)
    o, i = pos[:, 0], pos[:, 1]
    nnz = o.numel()
    rowptr = torch.zeros(out + 1, dtype=torch.int64)
    rowptr[1:] = torch.cumsum(counts, 0)
    order = torch.argsort(i * out + o)  # CSC: by column, then row
    colptr = torch.zeros(inp + 1, dtype=torch.int64)
    colptr[1:] = torch.cumsum(torch.bincount(i, minlength=inp), 0)
    return TrainLayout(
        kind=chosen,
        out_features=out,
        in_features=inp,
        nnz=nnz,
        k=int(live_counts[0]) if chosen == "fan_in" else None,
        flat=(o * inp + i).to(mask.device),
        live=live,
        rowptr=rowptr.int(),
        col=i.int(),
        colptr=colptr.int(),
        row=o[order].int().contiguous(),
        perm=order.int(),
        perm_inv=torch.argsort(order).int(),
    )


def _check_weight(weight: Tensor, layout: TrainLayout) -> None:
    if weight.shape[0] != layout.out_features or weight[0].numel() != layout.in_features:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not match the layout "
            f"({layout.out_features}, {layout.in_features})"
        )


def gather_values(weight: Tensor, layout: TrainLayout) -> Tensor:
    """The kept values of ``weight`` (2-D, or a 4-D conv weight), 1-D (nnz,) in the layout's
    order (an indexing copy: differentiable w.r.t. ``weight`` when it requires grad)."""
    _check_weight(weight, layout)
    return weight.reshape(-1)[layout.flat.to(weight.device)]


def scatter_values(values: Tensor, layout: TrainLayout, out: Tensor) -> Tensor:
    """Writes ``values`` (nnz,) into ``out`` (same shape as the layer's weight) at the kept
    positions and zeros elsewhere, in place; returns ``out``."""
    _check_weight(out, layout)
    if values.shape != (layout.nnz,):
        raise ValueError(f"values must have shape ({layout.nnz},), got {tuple(values.shape)}")
    with torch.no_grad():
        flat = out.view(-1)
        flat.zero_()
        flat[layout.flat.to(out.device)] = values.to(out.dtype)
    return out
