"""From a trained sparse model to an inference model: ``condense`` and ``export_model``.

``condense(model, masks)`` works on a copy of the model, in eval mode:

1. masks: ``masks`` (layer name -> 0/1 tensor, names as the sparsity methods use them:
   ``layer3.1.conv2``) or ``weight != 0`` of every Linear/Conv2d; weights are re-masked;
2. each masked layer is classified from its mask: dense (all ones), N:M (every group of M
   inputs holds N), constant fan-in (every surviving neuron holds k), or unstructured;
3. surgery on the torch.fx graph (``surgery.py``): BatchNorm folded into the conv before
   it, ablated neurons removed with the next layer's input channels where that is safe;
4. every sparse layer gets its inference form: constant fan-in and N:M layers condensed
   (``CondensedLinear`` / ``CondensedConv2d``; N:M ones stored in N:M compressed form),
   unstructured ones ``SparseLinear`` / ``SparseConv2d`` (CSR with compiled kernels,
   ``unstructured.py``) or dense. With ``example_input`` the choice is measured per layer
   on that layer's real input (condensed in both conv modes, sparse, dense: the fastest
   wins); without it a rule decides: condensed for constant fan-in and N:M, sparse for
   unstructured layers at density <= ``SPARSE_MAX_DENSITY``, else dense (measured
   crossovers, docs/benchmarks.md);
5. with ``example_input`` (and ``formats="auto"``), every unmasked depthwise
   3x3 conv is timed as ``DepthwiseConv2d`` (sst's kernel) against torch's conv and the
   faster kept (report rows of kind "dense", format "depthwise" or "dense").

``formats`` forces a choice: "condensed" (an unstructured layer is then refused with a
ValueError naming it), "sparse" (the compiled CSR kernels), "csr" (torch's CSR matmul),
or "dense" (the "structured only" model: surgery, dense GEMMs).
``dtype=torch.bfloat16`` stores the condensed layers' values in bf16 (CSR and dense layers
stay fp32), which halves their value bytes; the export check then allows the bf16 rounding
(``tolerance``). ``dtype=torch.int8`` stores every sparse layer as a ``Sparse*`` module
with int8 values and per-output-channel scales (condensed modules have no int8 form; dense
layers stay fp32); the check then allows ``INT8_ROUNDOFF`` per int8 layer.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sst.sparsity.layers import unwrap

from . import serialize, surgery
from .depthwise import DepthwiseConv2d, is_depthwise3x3
from .layers import CondensedConv2d, CondensedLinear, CSRConv2d, CSRLinear
from .packing import is_constant_fan_in, nm_pattern, value_dtype
from .unstructured import SPARSE_TYPES, SparseConv2d, SparseLinear

FORMATS = ("auto", "condensed", "sparse", "csr", "dense")
# Unstructured layers up to this density run the compiled CSR kernels without measurement.
SPARSE_MAX_DENSITY = 0.3
# Output tolerance of an fp32 export: max |y - y_ref| <= TOLERANCE * max(1, max |y_ref|).
TOLERANCE = 1e-4
# Unit roundoff of bf16 (8 significant bits): |bf16(w) - w| <= BF16_ROUNDOFF * |w|.
BF16_ROUNDOFF = 2.0**-8
# Allowance per int8 layer, relative to the output scale: a weight moves by at most half a
# step of its row's scale max|W[n]| / 127 (an estimate for a model, docs/condensed.md).
INT8_ROUNDOFF = 1.0 / 127


@dataclass
class LayerExport:
    """How one masked layer was exported."""

    name: str
    kind: str  # dense | constant_fan_in | nm | unstructured
    format: str  # dense | condensed | condensed:auto | condensed:direct | condensed:unfold |
    # sparse | csr | depthwise (an unmasked depthwise conv on sst's kernel)
    density: float
    nm: tuple[int, int] | None = None
    timings_us: dict[str, float] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What ``export_model`` wrote and checked."""

    path: Path
    layers: list[LayerExport]
    removed: dict[str, surgery.Removal]
    folded: list[str]
    max_abs_error: float | None
    reference_scale: float | None
    file_bytes: int


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layer name -> Linear/Conv2d module, in registration order."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    }


def layer_masks(model: nn.Module, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Boolean masks by layer name: ``masks`` when given (every name must be a Linear or
    Conv2d of ``model``), else ``weight != 0`` for every Linear/Conv2d.

    Raises:
        ValueError: naming masks that match no layer, or whose shape differs from it.
    """
    layers = weight_layers(model)
    if masks is None:
        return {name: layer.weight.detach() != 0 for name, layer in layers.items()}
    unknown = [name for name in masks if name not in layers]
    if unknown:
        raise ValueError(
            f"masks name layers that are not Linear/Conv2d modules of the model: {unknown[:5]}"
        )
    result = {}
    for name, mask in masks.items():
        weight = layers[name].weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(
                f"mask of layer {name!r} has shape {tuple(mask.shape)}, its weight "
                f"{tuple(weight.shape)}"
            )
        result[name] = mask.detach().to(weight.device).bool()
    return result


def classify(mask: Tensor) -> tuple[str, tuple[int, int] | None]:
    """(kind, (N, M) or None) of a mask: "dense", "nm", "constant_fan_in", "unstructured"."""
    if bool(mask.all()):
        return "dense", None
    nm = nm_pattern(mask) if mask.dim() >= 2 else None
    if nm is not None:
        return "nm", nm
    if is_constant_fan_in(mask.reshape(mask.shape[0], -1)):
        return "constant_fan_in", None
    return "unstructured", None


def time_modules(
    modules: Mapping[str, nn.Module], x: Tensor, rounds: int = 5, budget_s: float = 0.5
) -> dict[str, float]:
    """Seconds per call of each module on ``x``: the fastest of ``rounds`` interleaved calls
    (after a warm-up call each; 3 rounds only once ``budget_s`` has passed). The minimum,
    not the median, because other load on the machine only ever adds time."""
    best = {label: float("inf") for label in modules}
    sync = torch.cuda.synchronize if x.is_cuda else lambda: None  # GPU calls are asynchronous
    with torch.inference_mode():
        for module in modules.values():
            module(x)
        start = time.perf_counter()
        for done in range(rounds):
            for label, module in modules.items():
                sync()
                t0 = time.perf_counter()
                module(x)
                sync()
                best[label] = min(best[label], time.perf_counter() - t0)
            if done >= 2 and time.perf_counter() - start > budget_s:
                break
    return best


def _candidates(
    name: str,
    layer: nn.Module,
    mask: Tensor,
    kind: str,
    nm: tuple[int, int] | None,
    ragged: bool,
    formats: str,
    dtype: torch.dtype,
) -> dict[str, Callable[[], nn.Module]]:
    """Format -> builder of the module, for the formats allowed for this layer (condensed
    ones with ``dtype`` values)."""
    conv = isinstance(layer, nn.Conv2d)
    if conv and layer.groups != 1:
        return {"dense": lambda: layer}

    def condensed(mode: str = "auto") -> Callable[[], nn.Module]:
        if conv:
            return lambda: CondensedConv2d.from_conv(
                layer, mask, name=name, ragged=ragged, nm=nm, mode=mode, dtype=dtype
            )
        return lambda: CondensedLinear.from_linear(
            layer, mask, name=name, ragged=ragged, nm=nm, dtype=dtype
        )

    def csr() -> nn.Module:
        return (
            CSRConv2d.from_conv(layer, mask, name=name)
            if conv
            else CSRLinear.from_linear(layer, mask)
        )

    def sparse() -> nn.Module:
        fp = torch.int8 if dtype == torch.int8 else torch.float32
        if conv:
            return SparseConv2d.from_conv(layer, mask, name=name, dtype=fp)
        return SparseLinear.from_linear(layer, mask, dtype=fp)

    if formats == "dense" or kind == "dense":
        return {"dense": lambda: layer}
    if formats == "csr":
        return {"csr": csr}
    if formats == "sparse" or (dtype == torch.int8 and formats == "auto"):
        options: dict[str, Callable[[], nn.Module]] = {"sparse": sparse}
        if formats == "auto":
            options["dense"] = lambda: layer
        return options
    if formats == "condensed":
        return {"condensed": condensed()}
    structured = kind in ("nm", "constant_fan_in")
    options = {}
    if structured and conv:
        options["condensed:direct"] = condensed("direct")
        options["condensed:unfold"] = condensed("unfold")
    elif structured:
        options["condensed"] = condensed()
    if not structured or dtype == torch.float32:
        options["sparse"] = sparse
    options["dense"] = lambda: layer
    return options


def _rule(options: dict[str, Callable[[], nn.Module]], density: float) -> str:
    """The format chosen without measurements."""
    if "condensed:direct" in options:
        return "condensed:auto"
    if "condensed" in options:
        return "condensed"
    if "sparse" in options and density <= SPARSE_MAX_DENSITY:
        return "sparse"
    return next(iter(options)) if len(options) == 1 else "dense"


def capture_inputs(
    model: nn.Module, names: Sequence[str], example_input: Tensor
) -> dict[str, Tensor]:
    """The input each named layer sees when ``model`` runs ``example_input``."""
    seen: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        module = model.get_submodule(name)

        def hook(_module: nn.Module, args: tuple, name: str = name) -> None:
            seen[name] = args[0].detach().clone()

        hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for handle in hooks:
            handle.remove()
    return seen


def _masked_copy(
    model: nn.Module, masks: Mapping[str, Tensor] | None
) -> tuple[nn.Module, dict[str, Tensor]]:
    """An eval-mode copy of ``model`` with its masks applied to the weights, and the masks."""
    model = copy.deepcopy(unwrap(model)).eval()
    masks = layer_masks(model, masks)
    layers = weight_layers(model)
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)
    return model, masks


def _graph_surgery(
    model: nn.Module, masks: Mapping[str, Tensor], fold_bn: bool, remove_ablated: bool
) -> tuple[nn.Module, list[str], dict[str, surgery.Removal]]:
    """The model traced by torch.fx with BatchNorms folded and ablated neurons removed, the
    folded convs and the removals; the model itself when it cannot be traced."""
    try:
        target = surgery.trace(model)
    except Exception as error:  # fx raises many types for untraceable forwards
        warnings.warn(
            f"torch.fx cannot trace {type(model).__name__} ({error}); layers are condensed "
            f"in place without BN folding or neuron removal, and save() will refuse the model",
            stacklevel=3,
        )
        return model, [], {}
    folded = surgery.fold_batchnorms(target) if fold_bn else []
    removed = surgery.remove_ablated(target, masks) if remove_ablated else {}
    return target, folded, removed


def _export_layer(
    name: str,
    layer: nn.Module,
    mask: Tensor,
    kind: tuple[str, tuple[int, int] | None],
    ragged: bool,
    formats: str,
    dtype: torch.dtype,
    example: Tensor | None,
) -> tuple[nn.Module, LayerExport]:
    """The fastest of a layer's candidate forms on its captured input (``example``), else
    the rule's choice; and the report row."""
    kind_name, nm = kind
    if nm is not None and nm_pattern(mask) != nm:
        nm = None  # surgery removed inputs: no longer N:M, still condensed
    options = _candidates(name, layer, mask, kind_name, nm, ragged, formats, dtype)
    density = float(mask.float().mean()) if mask.numel() else 1.0
    timings: dict[str, float] = {}
    built: dict[str, nn.Module] = {}
    if example is not None and len(options) > 1:
        built = {label: build() for label, build in options.items()}
        timings = {k: v * 1e6 for k, v in time_modules(built, example).items()}
        choice = min(timings, key=timings.__getitem__)
    else:
        choice = _rule(options, density)
    if choice == "condensed:auto":
        module = options["condensed:direct"]()
        module.mode = "auto"
    else:
        module = built.get(choice) or options[choice]()
    return module, LayerExport(name, kind_name, choice, density, nm, timings)


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """The export's value dtype: float32, bfloat16 (condensed values) or int8 (sparse
    values), from a dtype or a name ("fp32", "bf16", "int8", ...).

    Raises:
        ValueError: for any other dtype or name, listing the allowed ones.
    """
    if dtype in (torch.int8, "int8"):
        return torch.int8
    try:
        return value_dtype(dtype)
    except ValueError:
        raise ValueError(
            f"dtype={dtype!r}: allowed values are float32, bfloat16 and int8 (or the names "
            f"'fp32', 'bf16', 'int8')"
        ) from None


def condense_with_report(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None = None,
    *,
    example_input: Tensor | None = None,
    formats: str = "auto",
    fold_bn: bool = True,
    remove_ablated: bool = True,
    dtype: torch.dtype | str = torch.float32,
) -> tuple[nn.Module, list[LayerExport], dict[str, surgery.Removal], list[str]]:
    """``condense`` plus what it did: per-layer exports, removals, folded convs."""
    if formats not in FORMATS:
        raise ValueError(f"formats={formats!r} is unknown: allowed values are {FORMATS}")
    dtype = resolve_dtype(dtype)
    model, masks = _masked_copy(model, masks)
    kinds = {name: classify(mask) for name, mask in masks.items()}
    target, folded, removed = _graph_surgery(model, masks, fold_bn, remove_ablated)
    ragged = {r.consumer for r in removed.values() if r.removed}
    names = [n for n in masks if kinds[n][0] != "dense" or n in ragged]
    depthwise = []
    if example_input is not None and formats == "auto":
        depthwise = [n for n, m in target.named_modules() if n not in masks and is_depthwise3x3(m)]
    inputs = {}
    if example_input is not None:
        inputs = capture_inputs(target, names + depthwise, example_input)
    report = []
    for name, mask in masks.items():
        layer = target.get_submodule(name)
        module, row = _export_layer(
            name, layer, mask, kinds[name], name in ragged, formats, dtype, inputs.get(name)
        )
        if module is not layer:
            surgery.set_submodule(target, name, module)
        report.append(row)
    for name in depthwise:
        report.append(_export_depthwise(target, name, inputs[name]))
    return target, report, removed, folded


def _export_depthwise(target: nn.Module, name: str, example: Tensor) -> LayerExport:
    """An unmasked depthwise 3x3 conv as ``DepthwiseConv2d`` (sst's kernel) where that is
    faster than torch's conv on its captured input, and the report row (kind "dense")."""
    layer = target.get_submodule(name)
    built = {"depthwise": DepthwiseConv2d.from_conv(layer), "dense": layer}
    timings = {k: v * 1e6 for k, v in time_modules(built, example).items()}
    choice = min(timings, key=timings.__getitem__)
    if choice == "depthwise":
        surgery.set_submodule(target, name, built["depthwise"])
    return LayerExport(name, "dense", choice, 1.0, None, timings)


def condense(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None = None,
    *,
    example_input: Tensor | None = None,
    formats: str = "auto",
    fold_bn: bool = True,
    remove_ablated: bool = True,
    dtype: torch.dtype | str = torch.float32,
) -> nn.Module:
    """An inference copy of a trained sparse ``model`` (see the module docstring): an
    ``fx.GraphModule`` when the model traces, else the model with its layers replaced.

    Args:
        model: the trained model, weights zero where masked.
        masks: layer name -> 0/1 mask; None uses ``weight != 0`` of every Linear/Conv2d.
        example_input: a typical batch; when given, each layer's format is measured on it.
        formats: "auto", or force "condensed" / "sparse" / "csr" / "dense" for every sparse
            layer.
        fold_bn: fold BatchNorm2d into the preceding conv.
        remove_ablated: remove ablated neurons and the next layer's inputs where safe.
        dtype: value type of the condensed layers, torch.float32 or torch.bfloat16 (or
            "fp32" / "bf16"), or torch.int8 ("int8"): every sparse layer as a
            ``Sparse*`` module with int8 values (per-output-channel scales); inputs,
            outputs and biases stay fp32.

    Raises:
        ValueError: naming the layer, if ``formats="condensed"`` meets an unstructured layer.
    """
    module, _, _, _ = condense_with_report(
        model,
        masks,
        example_input=example_input,
        formats=formats,
        fold_bn=fold_bn,
        remove_ablated=remove_ablated,
        dtype=dtype,
    )
    return module


def masked_reference(model: nn.Module, masks: Mapping[str, Tensor] | None) -> nn.Module:
    """An eval copy of ``model`` with the masks applied: the outputs an export must match."""
    return _masked_copy(model, masks)[0]


def bf16_layers(model: nn.Module) -> int:
    """Number of condensed modules holding bf16 values."""
    return sum(
        1
        for m in model.modules()
        if isinstance(m, (CondensedLinear, CondensedConv2d)) and m.value_dtype == torch.bfloat16
    )


def tolerance(model: nn.Module) -> float:
    """Relative output tolerance of an export check: ``TOLERANCE`` (fp32 sums in another
    order) plus ``BF16_ROUNDOFF`` per bf16 layer. A bf16 layer's output moves by at most
    2^-8 sum_j |W[n, j] x[j]| (each weight rounded within 2^-8 of itself), about 2^-8 |y|
    without cancellation; to first order the layers' relative errors add up. An estimate
    for the whole model, not a bound (tests/test_condensed.py checks the per-layer bound)."""
    return TOLERANCE + BF16_ROUNDOFF * bf16_layers(model) + INT8_ROUNDOFF * int8_layers(model)


def int8_layers(model: nn.Module) -> int:
    """Number of sparse modules holding int8 values."""
    return sum(
        1 for m in model.modules() if isinstance(m, SPARSE_TYPES) and m.value_dtype == torch.int8
    )


def max_error(output: Tensor, reference: Tensor) -> tuple[float, float]:
    """(max |output - reference|, max(1, max |reference|))."""
    return float((output - reference).abs().max()), max(1.0, float(reference.abs().max()))


def export_model(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None,
    out_path: str | Path,
    *,
    example_input: Tensor | None = None,
    compress: bool = False,
    formats: str = "auto",
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | str = torch.float32,
) -> ExportResult:
    """Condenses ``model`` (condensed values of ``dtype``), checks it against the masked
    model on ``example_input``, saves it to ``out_path`` (safetensors) and checks that the
    file loads to the same outputs.

    Raises:
        AssertionError: if the condensed model's outputs differ from the masked model's by
            more than ``tolerance`` (relative to the output scale: ``TOLERANCE`` for fp32),
            or the reloaded model's from the condensed model's by more than ``TOLERANCE``.
    """
    condensed, report, removed, folded = condense_with_report(
        model, masks, example_input=example_input, formats=formats, dtype=dtype
    )
    out_path = Path(out_path)
    info = {
        "formats": {layer.name: layer.format for layer in report},
        **(metadata or {}),
    }
    serialize.save(condensed, out_path, compress=compress, metadata=info)
    error = scale = None
    if example_input is not None:
        reloaded_model = serialize.load(out_path).to(example_input.device)
        with torch.inference_mode():
            reference = masked_reference(model, masks)(example_input)
            output = condensed(example_input)
            reloaded = reloaded_model(example_input)
        error, scale = max_error(output, reference)
        allowed = tolerance(condensed)
        if error > allowed * scale:
            raise AssertionError(
                f"condensed outputs differ from the masked model's by {error:.3g} "
                f"(tolerance {allowed * scale:.3g})"
            )
        reload_error, _ = max_error(reloaded, output)
        if reload_error > TOLERANCE * scale:
            raise AssertionError(f"the saved file reloads with outputs off by {reload_error:.3g}")
    return ExportResult(out_path, report, removed, folded, error, scale, out_path.stat().st_size)
