"""Windowed layout of a condensed matrix, for the AVX-512 small-batch kernel.

Live rows are taken 16 at a time (a group, one row per vector lane) and the inputs 32 at a
time (a window, held in two zmm registers). For group g and window w the layout holds
cnt[g, w] = max over the group's rows of their weights inside the window "ops"; op o holds,
for every lane, the lane's o-th weight in the window (or 0) and its position in the window.
The kernel computes each op as one two-register permute (vpermt2ps, an in-register gather)
and one FMA into the lane's accumulator:

    acc[lane] += value[op, lane] * x[32 * w + pos[op, lane]]

The padding is the price: at 90% sparsity on a 3072-input layer about half the lanes are
padding, but the op is about 5x cheaper per weight than a scalar or gathered load on the
CPUs measured (docs/benchmarks.md), so the layout wins at batch 1.

bf16 values (a bf16 matrix gives a bf16 layout) are stored with the ops of each window taken
in pairs (o, o + 1), interleaved by lane: element 2 * lane + i of the pair's 32 holds
value[o + i, lane], so one 64-byte load gives the kernel both ops' values (the low and high
halves of each 32-bit word). An odd window's last op is stored plain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .packing import Condensed

LANES = 16
WINDOW = 32


@dataclass
class Windowed:
    """The layout (see the module docstring); ``work`` counts multiply-adds incl. padding."""

    cnt: Tensor  # (groups, windows) uint8
    offset: Tensor  # (groups,) int64: first op of each group
    pos: Tensor  # (ops * 16,) uint8
    values: Tensor  # (ops * 16,) float32, or bfloat16 with ops paired (module docstring)
    bias: Tensor  # (groups * 16,) float32: bias of each lane's row (0 for padding)
    rows: Tensor  # (groups * 16,) int32: output row of each lane (-1 for padding)
    windows: int
    groups: int
    work: int

    @property
    def efficiency(self) -> float:
        """Fraction of the kernel's lanes that hold a weight."""
        return float((self.values != 0).sum()) / max(1, self.values.numel())


def build_windowed(matrix: Condensed, bias: Tensor | None) -> Windowed:
    """The windowed layout of ``matrix`` (padding entries of a ragged matrix are dropped)."""
    n_live, k = matrix.values.shape
    groups = -(-n_live // LANES)
    windows = -(-matrix.in_features // WINDOW)
    row = torch.arange(n_live).repeat_interleave(k)
    index = matrix.indices.flatten().long()
    value = matrix.values.flatten()
    keep = value != 0
    row, index, value = row[keep], index[keep], value[keep]
    lane = row % LANES
    key = ((row // LANES) * windows + index // WINDOW) * LANES + lane
    counts = torch.bincount(key, minlength=groups * windows * LANES)
    cnt = counts.view(groups, windows, LANES).amax(dim=2)
    ops_before = torch.cumsum(cnt.flatten(), 0) - cnt.flatten()
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(sorted_key.numel()) - first[sorted_key]
    slot = (ops_before[sorted_key // LANES] + rank) * LANES + lane[order]
    n_ops = int(cnt.sum())
    pos = torch.zeros(n_ops * LANES, dtype=torch.uint8)
    pos[slot] = (index[order] % WINDOW).to(torch.uint8)
    values = torch.zeros(n_ops * LANES, dtype=matrix.values.dtype)
    values[slot] = value[order]
    if values.dtype == torch.bfloat16:
        values = values[pair_order(cnt.flatten())]
    per_group = cnt.sum(dim=1)
    offset = torch.cumsum(per_group, 0) - per_group
    rows = torch.full((groups * LANES,), -1, dtype=torch.int32)
    rows[:n_live] = matrix.live_rows().to(torch.int32)
    lane_bias = torch.zeros(groups * LANES)
    if bias is not None:
        lane_bias[:n_live] = bias.detach().float()[matrix.live_rows()]
    return Windowed(
        cnt.to(torch.uint8).contiguous(),
        offset.contiguous(),
        pos,
        values,
        lane_bias,
        rows,
        windows,
        groups,
        n_ops * LANES,
    )


def pair_order(cnt: Tensor) -> Tensor:
    """Gather order that interleaves the ops of each window in pairs: element e of the
    result is element ``order[e]`` of the plain (ops, 16) layout. For op o = 2p + i of a
    window (i in 0, 1) with a partner, lane l goes to 16 * 2p + 2l + i of the window; a
    window's last odd op stays at 16 * o + l."""
    ops_before = torch.cumsum(cnt, 0) - cnt
    start = torch.repeat_interleave(ops_before, cnt)
    count = torch.repeat_interleave(cnt, cnt)
    op = torch.arange(int(cnt.sum()))
    rank = op - start
    parity = rank % 2
    paired = (rank - parity + 1) < count
    lane = torch.arange(LANES)
    plain = op.view(-1, 1) * LANES + lane
    interleaved = (op - parity).view(-1, 1) * LANES + 2 * lane + parity.view(-1, 1)
    target = torch.where(paired.view(-1, 1), interleaved, plain).flatten()
    return torch.empty_like(target).scatter_(0, target, torch.arange(target.numel()))
