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
- ``size_report(model_or_masks)`` / ``format_size_table``: bytes per format;
  ``dtype_totals`` / ``format_dtype_table``: the model's bytes in fp32, bf16 and int8.
- ``SparseLinear`` / ``SparseConv2d``: unstructured (CSR) layers with compiled batch-1 and
  1x1-conv kernels, fp32 or int8 values; ``DepthwiseConv2d``: a compiled dense 3x3 depthwise.
- ``latency_table`` / ``meets_target``: each layer's dense and sparse time by sparsity, and
  the lowest sparsity that meets a speed-up target.

Training in condensed form (``trainer.sparse_compute``):

- ``build_layout(mask)`` once per mask, then ``sparse_linear`` / ``sparse_conv2d(x, values,
  layout, bias, ...)``: forward, input gradient (the transpose product) and weight gradient
  (a sampled dense-dense product at the kept positions) over the kept weights only.
- ``SparseCompute(model, optimizer, mask_set)``: switches a model's masked layers (and their
  optimizer state) between condensed and masked-dense form, for use in any training loop.
"""

from .cpu import compiled_available, kernel_info
from .depthwise import DepthwiseConv2d
from .export import ExportResult, LayerExport, condense, condense_with_report, export_model
from .latency import latency_table, meets_target
from .layers import CondensedConv2d, CondensedLinear, CSRConv2d, CSRLinear
from .packing import index_dtype
from .serialize import load, save
from .size import dtype_totals, format_dtype_table, format_size_table, size_report
from .sparse_train import (
    TrainLayout,
    build_layout,
    gather_values,
    scatter_values,
    sparse_conv2d,
    sparse_linear,
)
from .training import SparseCompute
from .unstructured import SparseConv2d, SparseLinear

__all__ = [
    "CSRConv2d",
    "CSRLinear",
    "CondensedConv2d",
    "CondensedLinear",
    "DepthwiseConv2d",
    "ExportResult",
    "LayerExport",
    "SparseCompute",
    "SparseConv2d",
    "SparseLinear",
    "TrainLayout",
    "build_layout",
    "compiled_available",
    "condense",
    "condense_with_report",
    "dtype_totals",
    "export_model",
    "format_dtype_table",
    "format_size_table",
    "gather_values",
    "index_dtype",
    "kernel_info",
    "latency_table",
    "load",
    "meets_target",
    "save",
    "scatter_values",
    "size_report",
    "sparse_conv2d",
    "sparse_linear",
]
