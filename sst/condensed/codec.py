"""Entropy-coded storage of condensed indices: delta coding, byte planes, zlib.

Each row's indices are non-decreasing (the condensed form sorts them), so the deltas
d[0] = I[0], d[j] = I[j] - I[j-1] are small: at density p they are about geometric with
mean 1/p, whose entropy approaches the mask's (log2 C(n, k) / k bits per index). The deltas
are written as little-endian integers of the index width, split into byte planes (all low
bytes, then all high bytes, which are mostly zero) and compressed with zlib (DEFLATE, in the
standard library), so no dependency is added.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor

LEVEL = 9

_NUMPY = {torch.uint8: np.uint8, torch.int16: np.uint16, torch.int32: np.uint32}


def encode_indices(indices: Tensor) -> bytes:
    """zlib of the byte planes of the per-row deltas of ``indices`` (rows non-decreasing)."""
    rows = indices.long()
    deltas = torch.diff(rows, dim=1, prepend=torch.zeros_like(rows[:, :1]))
    if rows.numel() and int(deltas.min()) < 0:
        raise ValueError("indices must be non-decreasing along each row to delta-code them")
    width = np.dtype(_NUMPY[indices.dtype])
    raw = deltas.numpy().astype(width.newbyteorder("<")).tobytes()
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width.itemsize).T
    return zlib.compress(np.ascontiguousarray(planes).tobytes(), LEVEL)


def decode_indices(blob: bytes, shape: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """Inverse of ``encode_indices``."""
    width = np.dtype(_NUMPY[dtype]).newbyteorder("<")
    planes = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
    raw = np.ascontiguousarray(planes.reshape(width.itemsize, -1).T).tobytes()
    deltas = np.frombuffer(raw, dtype=width).astype(np.int64).reshape(shape)
    return torch.from_numpy(np.cumsum(deltas, axis=1)).to(dtype)


def encode_rows(mask2d: Tensor) -> bytes:
    """Entropy-coded column indices of any 2-D mask: zlib of the byte planes of the per-row
    counts (int32) followed by the per-row deltas of the column indices (the CSR structure
    delta-coded); used to size unstructured layers."""
    mask2d = mask2d.bool()
    counts = mask2d.sum(dim=1).to(torch.int32)
    rows, cols = mask2d.nonzero(as_tuple=True)
    previous = torch.zeros_like(cols)
    previous[1:] = cols[:-1]
    first = torch.ones_like(cols, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    deltas = torch.where(first, cols, cols - previous).to(torch.int32)
    width = 2 if mask2d.shape[1] <= 65535 else 4
    parts = []
    for values, size in ((counts, 4), (deltas, width)):
        raw = values.numpy().astype(f"<u{size}").tobytes()
        planes = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size).T
        parts.append(np.ascontiguousarray(planes).tobytes())
    return zlib.compress(b"".join(parts), LEVEL)
