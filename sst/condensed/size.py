"""Storage size of sparse layers in every format, next to the theoretical minimum.

Per layer with weight of ``numel`` entries, ``nnz`` active, ``rows`` output neurons and
v bytes per value (4 for fp32, 2 for bf16, 1 for int8; every format's index or metadata
overhead counted; int8 adds 4 bytes of scale per output row, ``scale``, to every format):

- dense:       v * numel
- bitmap:      ceil(numel / 8) + v * nnz              (one bit per position)
- CSR int64:   v * nnz + 8 * nnz + 8 * (rows + 1)     (PyTorch's default index type)
- CSR int32:   v * nnz + 4 * nnz + 4 * (rows + 1)
- sparse:      v * nnz + c * nnz + 4 * (rows + 1), c = 2 for a fan-in <= 32767 else 4 (the
               ``SparseLinear`` / ``SparseConv2d`` modules: int32 row pointers, int16 columns)
- condensed:   (v + b) * live * k + 4 * live if any neuron is ablated, else (v + b) * live * k,
               b = 1, 2 or 4 bytes by the fan-in (``packing.index_dtype``); constant fan-in only
- N:M:         v * nnz + ceil(nnz * bits / 8), bits = 2 for 2:4 (``packing.nm_bits``); N:M only
- entropy-coded: v * nnz + the zlib size of the delta-coded structure (``codec.encode_rows``)
- minimum:     v * nnz + log2(C(numel, nnz)) / 8      (values + the entropy of the mask)

Every format of a layer is counted with the same v, so the columns compare index overheads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from . import codec
from .layers import CONDENSED_TYPES, CSR_TYPES
from .packing import index_dtype, is_constant_fan_in, nm_bits, nm_pattern, value_dtype
from .unstructured import SPARSE_TYPES

COLUMNS = (
    "dense", "bitmap", "csr64", "csr32", "sparse", "condensed", "nm", "entropy", "minimum",
)  # fmt: skip
# Bytes per value of the value types a size report counts.
VALUE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.int8: 1}


@dataclass
class LayerSize:
    """Bytes of one layer in every format (None where the format does not apply)."""

    name: str
    shape: tuple[int, ...]
    nnz: int
    live: int
    dense: int
    bitmap: int
    csr64: int
    csr32: int
    condensed: int | None
    nm: int | None
    entropy: int
    minimum: float
    value_bytes: int = 4
    sparse: int = 0

    @property
    def density(self) -> float:
        return self.nnz / max(1, math.prod(self.shape))


def log2_binomial(n: int, k: int) -> float:
    """log2 C(n, k), through lgamma."""
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def layer_size(name: str, mask: Tensor, value_bytes: int = 4) -> LayerSize:
    """Sizes of a layer with this 0/1 mask (weight-shaped), ``value_bytes`` per value (1:
    int8, which adds a 4-byte scale per output row to every format)."""
    v = value_bytes
    mask = mask.detach().bool().cpu()
    shape = tuple(mask.shape)
    numel = mask.numel()
    rows = shape[0]
    flat = mask.reshape(rows, -1)
    nnz = int(flat.sum())
    counts = flat.sum(dim=1)
    live = int((counts > 0).sum())
    fan_in = flat.shape[1]
    condensed = None
    if is_constant_fan_in(flat):
        k = int(counts.max())
        width = torch.empty(0, dtype=index_dtype(fan_in)).element_size()
        condensed = (v + width) * live * k + (4 * live if live < rows else 0)
    nm = None
    pattern = nm_pattern(mask) if mask.dim() >= 2 else None
    if pattern is not None:
        nm = v * nnz + math.ceil(nnz * nm_bits(pattern[1]) / 8)
    scale = 4 * rows if v == 1 else 0
    column = 2 if fan_in <= 32767 else 4
    return LayerSize(
        name=name,
        shape=shape,
        nnz=nnz,
        live=live,
        dense=v * numel + scale,
        bitmap=math.ceil(numel / 8) + v * nnz + scale,
        csr64=(v + 8) * nnz + 8 * (rows + 1) + scale,
        csr32=(v + 4) * nnz + 4 * (rows + 1) + scale,
        condensed=None if condensed is None else condensed + scale,
        nm=None if nm is None else nm + scale,
        entropy=v * nnz + len(codec.encode_rows(flat)) + scale,
        minimum=v * nnz + log2_binomial(numel, nnz) / 8 + scale,
        value_bytes=v,
        sparse=(v + column) * nnz + 4 * (rows + 1) + scale,
    )


def model_masks(model: nn.Module) -> dict[str, Tensor]:
    """``weight != 0`` of every Linear/Conv2d and condensed/CSR module (pass explicit masks
    to ``size_report`` to count active weights that happen to be exactly zero)."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, CONDENSED_TYPES):
            masks[name] = (module.dense_weight() != 0).view(module.weight_shape)
        elif isinstance(module, CSR_TYPES):
            masks[name] = module.dense_weight() != 0
        elif isinstance(module, SPARSE_TYPES):
            weight = module.dense_weight()
            masks[name] = (weight != 0).view(getattr(module, "weight_shape", weight.shape))
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            masks[name] = module.weight.detach() != 0
    return masks


def model_value_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes per stored value of every layer ``model_masks`` lists: a condensed module's
    values, a CSR module's or a Linear/Conv2d's weight."""
    sizes = {}
    for name, module in model.named_modules():
        if isinstance(module, CONDENSED_TYPES):
            sizes[name] = module.values.element_size()
        elif isinstance(module, CSR_TYPES):
            sizes[name] = module.csr_values.element_size()
        elif isinstance(module, SPARSE_TYPES):
            sizes[name] = module.values.element_size()
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            sizes[name] = module.weight.element_size()
    return sizes


def size_report(
    model_or_masks: nn.Module | Mapping[str, Tensor], *, dtype: torch.dtype | str | None = None
) -> list[LayerSize]:
    """Per-layer sizes (``LayerSize``) for a model or a dict of masks; ``total`` sums them.

    ``dtype`` (float32, bfloat16 or int8, or their names) is the value type counted for every
    layer; None counts a model's layers in their own value dtype (a bf16 export's condensed
    layers at 2 bytes, an int8 export's sparse layers at 1) and masks at 4 bytes (fp32).

    Raises:
        ValueError: for another dtype, listing the allowed ones."""
    if isinstance(model_or_masks, nn.Module):
        masks = model_masks(model_or_masks)
        widths = model_value_bytes(model_or_masks)
    else:
        masks, widths = model_or_masks, {}
    fixed = None if dtype is None else VALUE_BYTES[_report_dtype(dtype)]
    return [layer_size(name, mask, fixed or widths.get(name, 4)) for name, mask in masks.items()]


def _report_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if dtype in (torch.int8, "int8"):
        return torch.int8
    try:
        return value_dtype(dtype)
    except ValueError:
        raise ValueError(
            f"dtype={dtype!r}: size reports count float32, bfloat16 or int8 values "
            f"(names 'fp32', 'bf16', 'int8')"
        ) from None


def dtype_totals(
    masks: Mapping[str, Tensor], dtypes: tuple[str, ...] = ("fp32", "bf16", "int8")
) -> dict[str, dict[str, float | None]]:
    """Total bytes of every format (``total``) with each value type: dtype name -> column ->
    bytes (the size report of the masks at fp32, bf16 and int8)."""
    return {name: total(size_report(masks, dtype=name)) for name in dtypes}


def format_dtype_table(masks: Mapping[str, Tensor]) -> str:
    """A Markdown table of ``dtype_totals`` in bytes: one row per value type."""
    columns = ("dense", "csr32", "sparse", "condensed", "entropy", "minimum")
    lines = ["| values | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, sums in dtype_totals(masks).items():
        cells = ["n/a" if sums[c] is None else f"{sums[c]:,.0f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def total(report: list[LayerSize]) -> dict[str, float | None]:
    """Column sums; a column is None when a layer has no such format."""
    sums: dict[str, float | None] = {}
    for column in COLUMNS:
        values = [getattr(layer, column) for layer in report]
        sums[column] = None if any(v is None for v in values) else float(sum(values))
    sums["nnz"] = float(sum(layer.nnz for layer in report))
    return sums


def _kib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1024:,.1f}"


def format_size_table(report: list[LayerSize]) -> str:
    """A Markdown table of ``report`` in KiB, one row per layer and a total."""
    header = (
        "| layer | shape | density | dense | bitmap | CSR int64 | CSR int32 | sparse | condensed "
        "| N:M | entropy-coded | minimum |"
    )
    lines = ["storage in KiB (1 KiB = 1024 bytes)", "", header, "|" + "---|" * 12]
    for layer in report:
        cells = [_kib(getattr(layer, c)) for c in COLUMNS]
        shape = "x".join(str(s) for s in layer.shape)
        lines.append(
            f"| {layer.name} | {shape} | {layer.density:.3f} | " + " | ".join(cells) + " |"
        )
    sums = total(report)
    numel = sum(math.prod(layer.shape) for layer in report)
    cells = [_kib(sums[c]) for c in COLUMNS]
    lines.append(f"| **total** | | {sums['nnz'] / max(1, numel):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def as_dicts(report: list[LayerSize]) -> list[dict]:
    return [asdict(layer) for layer in report]
