"""Export and fast inference for structured-sparse models (docs/condensed.md).

A constant fan-in layer (SRigL, Lasby et al., "Dynamic Sparse Training with Structured
Sparsity", ICLR 2024) stores per surviving neuron k values and k input indices:

    y[n] = b[n] + sum_j V[n, j] * x[I[n, j]]

- ``CondensedLinear.from_linear(linear)`` / ``CondensedConv2d.from_conv(conv)``: one layer.
- ``condense(model, masks=None)``: the whole model (BN folding, ablated-neuron removal,
  condensed / N:M / CSR / dense per layer); ``dtype=torch.bfloat16`` stores the condensed
  values in bf16 (half their bytes; inputs, outputs and sums stay fp32).
- ``save(model, path)`` / ``load(path)``: safetensors with the graph to rebuild it.
- ``export_model(model, masks, out_path, example_input=...)``: all of it, checked.
- ``size_report(model_or_masks)`` / ``format_size_table``: bytes per format.
"""

from .cpu import compiled_available, kernel_info
from .export import ExportResult, LayerExport, condense, condense_with_report, export_model
from .layers import CondensedConv2d, CondensedLinear, CSRConv2d, CSRLinear
from .packing import index_dtype
from .serialize import load, save
from .size import format_size_table, size_report

__all__ = [
    "CSRConv2d",
    "CSRLinear",
    "CondensedConv2d",
    "CondensedLinear",
    "ExportResult",
    "LayerExport",
    "compiled_available",
    "condense",
    "condense_with_report",
    "export_model",
    "format_size_table",
    "index_dtype",
    "kernel_info",
    "load",
    "save",
    "size_report",
]
