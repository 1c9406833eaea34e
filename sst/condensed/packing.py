"""The condensed form of a constant fan-in matrix, and the N:M compressed form.

Condensed (Lasby et al., "Dynamic Sparse Training with Structured Sparsity", ICLR 2024):
every surviving output neuron n keeps k values V[n, j] and k input indices I[n, j], and

    y[n] = b[n] + sum_j V[n, j] * x[I[n, j]].

Ablated neurons (all-zero rows) are left out; ``rows`` lists the surviving ones. Indices use
the narrowest type that holds the fan-in (``index_dtype``); no row pointers are needed.
Values are float32 or bfloat16 (``value_dtype``): bf16 keeps 8 significant bits, so each
weight is rounded to within a relative 2^-8 of its fp32 value, and halves the value bytes.

N:M (every group of M consecutive inputs holds N weights, NVIDIA's 2:4 for M = 4): values
plus, per value, its position inside its group in ceil(log2 M) bits, packed into bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Value types of the condensed form, by the names ``value_dtype`` accepts.
VALUE_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def value_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float32 or torch.bfloat16, from a dtype or a name in ``VALUE_DTYPES``.

    Raises:
        ValueError: for any other dtype or name.
    """
    resolved = VALUE_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.bfloat16):
        raise ValueError(
            f"dtype={dtype!r}: condensed values are float32 or bfloat16 "
            f"(names {list(VALUE_DTYPES)})"
        )
    return resolved


def index_dtype(in_features: int) -> torch.dtype:
    """uint8 for a fan-in of at most 256, int16 up to 32767, int32 beyond."""
    if in_features <= 256:
        return torch.uint8
    if in_features <= 32767:
        return torch.int16
    return torch.int32


@dataclass
class Condensed:
    """A condensed matrix: ``values`` and ``indices`` (n_live, k), ``rows`` (n_live,) int32
    output row of each, or None when no row is ablated."""

    values: Tensor
    indices: Tensor
    rows: Tensor | None
    out_features: int
    in_features: int

    @property
    def k(self) -> int:
        return self.values.shape[1]

    @property
    def n_live(self) -> int:
        return self.values.shape[0]

    def live_rows(self) -> Tensor:
        """Output row of each live row, as int64."""
        if self.rows is None:
            return torch.arange(self.n_live, device=self.values.device)
        return self.rows.long()

    def to_dense(self) -> Tensor:
        """The (out_features, in_features) matrix, zeros where inactive."""
        dense = self.values.new_zeros(self.out_features, self.in_features)
        live = dense[self.live_rows()]
        live.scatter_add_(1, self.indices.long(), self.values)
        dense[self.live_rows()] = live
        return dense


def describe(name: str | None, shape: tuple[int, ...]) -> str:
    return f"layer {name!r}" if name else f"a layer of weight shape {shape}"


def condense_matrix(
    weight: Tensor, mask: Tensor, *, name: str | None = None, ragged: bool = False
) -> Condensed:
    """Condensed form of ``weight * mask`` for a 2-D (out, in) weight.

    Every non-zero row of ``mask`` must hold the same number k of ones (constant fan-in);
    all-zero rows are ablated neurons. With ``ragged=True`` rows may differ and the shorter
    ones are padded with zero values (used after model surgery removed some inputs).

    Raises:
        ValueError: naming the layer, if the rows' counts differ and ``ragged`` is False.
    """
    mask = mask.bool()
    counts = mask.sum(dim=1)
    live = counts > 0
    live_counts = counts[live]
    if live_counts.numel() == 0:
        k = 0
    elif ragged:
        k = int(live_counts.max())
    else:
        k = int(live_counts[0])
        if not bool((live_counts == k).all()):
            found = sorted(set(live_counts.tolist()))
            raise ValueError(
                f"{describe(name, tuple(weight.shape))} is not constant fan-in: its non-ablated "
                f"rows hold {found[:6]}{' ...' if len(found) > 6 else ''} active weights, the "
                f"condensed format needs the same number in every row; export it as CSR or dense"
            )
    live_mask = mask[live]
    # A stable sort on "inactive" puts each row's active columns first, in ascending order.
    order = torch.argsort((~live_mask).to(torch.uint8), dim=1, stable=True)[:, :k]
    active = live_mask.gather(1, order)
    values = torch.where(active, weight[live].gather(1, order), 0.0).float().contiguous()
    indices = torch.where(active, order, 0)
    if ragged:  # padding (index 0) first, so that every row's indices are non-decreasing
        indices, perm = torch.sort(indices, dim=1, stable=True)
        values = values.gather(1, perm)
    indices = indices.to(index_dtype(weight.shape[1])).contiguous()
    rows = None if bool(live.all()) else live.nonzero().flatten().to(torch.int32)
    return Condensed(values, indices, rows, weight.shape[0], weight.shape[1])


def is_constant_fan_in(mask: Tensor) -> bool:
    """Every non-zero row of the 2-D ``mask`` holds the same number of ones."""
    counts = mask.bool().sum(dim=1)
    live = counts[counts > 0]
    return live.numel() > 0 and bool((live == live[0]).all())


# ------------------------------------------------------------------------------ N:M
def nm_units(tensor: Tensor) -> Tensor:
    """``tensor`` with the input channels last: (out, fan_in) for a Linear, (out, kh, kw, c)
    flattened to (out, fan_in) for a conv, so that N:M groups are consecutive."""
    if tensor.dim() > 2:
        tensor = tensor.movedim(1, -1)
    return tensor.reshape(tensor.shape[0], -1)


def nm_pattern(mask: Tensor, candidates: tuple[int, ...] = (4, 8, 16)) -> tuple[int, int] | None:
    """(N, M) if every group of M consecutive input channels of ``mask`` holds exactly N ones
    for some M in ``candidates`` with N < M (the smallest such M), else None."""
    units = nm_units(mask.bool())
    channels = mask.shape[1]
    for m in candidates:
        if channels % m:
            continue
        groups = units.reshape(units.shape[0], -1, m).sum(-1)
        n = int(groups.flatten()[0])
        if 0 < n < m and bool((groups == n).all()):
            return n, m
    return None


def nm_bits(m: int) -> int:
    """Bits of metadata stored per value: the position inside a group of m, in ceil(log2 m)
    bits rounded up to 1, 2, 4 or 8 so that codes never straddle a byte (2 bits for 2:4)."""
    need = max(1, math.ceil(math.log2(m)))
    return next(b for b in (1, 2, 4, 8) if b >= need)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Packs small non-negative integers (< 2**bits, bits in 1, 2, 4, 8) into uint8, low bits
    first."""
    if 8 % bits:
        raise ValueError(f"bits={bits} must divide 8")
    per = 8 // bits
    flat = codes.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % per)])
    shifts = torch.arange(per, dtype=torch.uint8) * bits
    return (flat.view(-1, per) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of ``pack_bits``: the first ``count`` codes, as int64."""
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.uint8) * bits
    codes = (packed.view(-1, 1) >> shifts) & ((1 << bits) - 1)
    return codes.flatten()[:count].long()


def nm_metadata(condensed_positions: Tensor, m: int) -> Tensor:
    """Packed N:M metadata for unit-ordered column positions (n_rows, k): position mod m."""
    return pack_bits(condensed_positions % m, nm_bits(m))


def nm_positions(metadata: Tensor, n: int, m: int, rows: int, fan_in: int) -> Tensor:
    """Unit-ordered column positions (rows, fan_in * n / m) from packed metadata: group g's
    values sit at g * m + their stored offset."""
    per_row = fan_in // m * n
    offsets = unpack_bits(metadata, nm_bits(m), rows * per_row).view(rows, per_row)
    group = torch.arange(per_row) // n
    return group * m + offsets


def unit_to_flat(positions: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Maps unit-ordered fan-in positions (inputs last, ``nm_units``) to PyTorch's flat
    (c, kh, kw) fan-in order of a weight of ``shape``."""
    if len(shape) <= 2:
        return positions
    c = shape[1]
    spatial = math.prod(shape[2:])
    return (positions % c) * spatial + positions // c


def flat_to_unit(positions: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of ``unit_to_flat``."""
    if len(shape) <= 2:
        return positions
    c = shape[1]
    spatial = math.prod(shape[2:])
    return (positions % spatial) * c + positions // spatial
