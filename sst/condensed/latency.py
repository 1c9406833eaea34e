"""The latency table: per layer, how much faster its sparse form runs than the dense one at
each sparsity, and the lowest sparsity that meets a speed target.

The pipeline of unstructured sparse inference on mobile CPUs (Paddle Lite's sparse
convolutions; the MobileNet studies of Elsen et al., "Fast Sparse ConvNets", CVPR 2020) does
not give every layer the same sparsity: it measures each layer dense and sparse at a range
of sparsities, for the batch, thread count and input size it will run at, and picks per
layer the lowest sparsity at which the layer is at least ``target`` times faster than dense.
Lower sparsity costs less accuracy, so that choice buys the speed for the least accuracy.

For every eligible layer (a Linear or a groups=1 Conv2d among ``layer_types``) and sparsity
s, ``latency_table``:

1. draws a random mask with density d = 1 - s (``unstructured``: round(d * numel) weights
   anywhere; ``constant_fanin``: round(d * fan_in) inputs in every row);
2. builds the layer's sparse form with the export (``condense`` on the layer alone, with the
   layer's real input: the export times every candidate form and the fastest non-dense one
   is kept), so the table follows the export's kernels as they change;
3. times the dense layer and the sparse form on the layer's real input (captured with a
   forward pre-hook while the whole model runs ``batch`` random examples), interleaved
   (dense, sparse, dense, sparse, ...) for ``repeats`` rounds, and keeps each one's median:

       speedup(layer, s) = median_t(dense) / median_t(sparse).

``meets_target(rows, target)`` is then, per layer, min {s : speedup(layer, s) >= target}
(None when no sparsity meets it), and ``densities_override`` writes it as the
``sparsity.densities`` setting of a training run (1 - s per layer, 1.0 for layers that never
meet the target, so they stay dense).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sst.sparsity.layers import weight_layers

from .export import capture_inputs, condense_with_report

SPARSITIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
STRUCTURES = ("unstructured", "constant_fanin")
# Each timed sample runs a layer this long at least (calls repeated), so that the timer's
# resolution and call overheads do not decide small layers.
MIN_SAMPLE_S = 2e-4


@dataclass
class LayerLatency:
    """One layer at one sparsity: dense and sparse median times (microseconds)."""

    name: str
    layer: str  # "Linear 1024->1000" | "Conv2d 1x1 256->512"
    input_shape: tuple[int, ...]
    sparsity: float
    structure: str
    dense_us: float
    sparse_us: float
    format: str  # the sparse form timed (the export's fastest non-dense candidate)
    export_format: str  # what the export picks for this layer and mask (may be "dense")

    @property
    def speedup(self) -> float:
        """median dense time / median sparse time."""
        return self.dense_us / self.sparse_us


def describe(module: nn.Module) -> str:
    """A short description of a Linear or Conv2d: type, kernel, channels."""
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}"
    kernel = "x".join(str(k) for k in module.kernel_size)
    stride = f" s{module.stride[0]}" if module.stride != (1, 1) else ""
    return f"Conv2d {kernel}{stride} {module.in_channels}->{module.out_channels}"


def eligible_layers(model: nn.Module, layer_types: Sequence[str]) -> dict[str, nn.Module]:
    """Name -> module of the ``layer_types`` layers the export can make sparse: Linear and
    Conv2d with groups=1 (it keeps grouped and depthwise convs dense)."""
    names = weight_layers(model, layer_types)
    layers = {name: model.get_submodule(name) for name in names if not name.endswith("_weight")}
    return {
        name: module
        for name, module in layers.items()
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
    }


def random_mask(
    weight: Tensor, sparsity: float, structure: str, generator: torch.Generator
) -> Tensor:
    """A 0/1 mask with density 1 - ``sparsity``: ``unstructured`` keeps round(d * numel)
    weights anywhere, ``constant_fanin`` round(d * fan_in) in every output row (at least 1)."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure={structure!r} is unknown: allowed values are {STRUCTURES}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} must be in [0, 1)")
    rows = weight.reshape(weight.shape[0], -1)
    density = 1.0 - sparsity
    if structure == "unstructured":
        keep = max(1, round(density * rows.numel()))
        flat = torch.zeros(rows.numel(), dtype=torch.bool)
        flat[torch.randperm(rows.numel(), generator=generator)[:keep]] = True
        return flat.reshape(weight.shape)
    keep = max(1, round(density * rows.shape[1]))
    order = torch.rand(rows.shape, generator=generator).argsort(dim=1)[:, :keep]
    mask = torch.zeros(rows.shape, dtype=torch.bool).scatter_(1, order, True)
    return mask.reshape(weight.shape)


def interleaved_medians(
    modules: Mapping[str, nn.Module], x: Tensor, repeats: int
) -> dict[str, float]:
    """Seconds per call of each module on ``x``: the median over ``repeats`` rounds, each
    round calling every module once in turn (so that load on the machine hits all alike).
    A sample repeats the call until it lasts ``MIN_SAMPLE_S`` (the count set by the
    fastest of three calls of the first module)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    with torch.inference_mode():
        first = next(iter(modules.values()))
        for module in modules.values():
            module(x)
        single = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            first(x)
            single = min(single, time.perf_counter() - t0)
        calls = max(1, math.ceil(MIN_SAMPLE_S / max(single, 1e-9)))
        samples: dict[str, list[float]] = {label: [] for label in modules}
        for _ in range(repeats):
            for label, module in modules.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    module(x)
                samples[label].append((time.perf_counter() - t0) / calls)
    return {label: statistics.median(times) for label, times in samples.items()}


def sparse_form(
    layer: nn.Module, mask: Tensor, x: Tensor, dtype: str = "fp32"
) -> tuple[nn.Module, str, str]:
    """(the sparse module, its format, the export's own choice) for ``layer`` under ``mask``:
    the export's fastest non-dense candidate on ``x``, with ``dtype`` values."""
    wrapper = nn.Sequential(copy.deepcopy(layer))
    masks = {"0": mask}
    options: dict[str, Any] = {"fold_bn": False, "remove_ablated": False, "dtype": dtype}
    model, report, _, _ = condense_with_report(wrapper, masks, example_input=x, **options)
    row = next(r for r in report if r.name == "0")
    chosen = row.format
    if chosen != "dense":
        return model.get_submodule("0"), chosen, chosen
    sparse = {k: v for k, v in row.timings_us.items() if k != "dense"}
    label = min(sparse, key=sparse.__getitem__) if sparse else "csr"
    kind, _, mode = label.partition(":")  # "condensed:unfold": the conv's mode too
    forced, _, _, _ = condense_with_report(wrapper, masks, formats=kind, **options)
    module = forced.get_submodule("0")
    if mode:
        module.mode = mode
    return module, label, chosen


def _check_arguments(structure: str, sparsities: Sequence[float], **counts: int) -> None:
    """``latency_table``'s settings, each error naming the setting and what it allows."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure={structure!r} is unknown: allowed values are {STRUCTURES}")
    if not sparsities or not all(0.0 <= s < 1.0 for s in sparsities):
        raise ValueError(f"sparsities={list(sparsities)}: give one or more numbers in [0, 1)")
    for setting, value in counts.items():
        if value < 1:
            raise ValueError(f"{setting}={value} must be at least 1")


def latency_table(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch: int = 1,
    threads: int = 1,
    sparsities: Sequence[float] = SPARSITIES,
    layer_types: Sequence[str] = ("Linear", "Conv2d"),
    structure: str = "unstructured",
    repeats: int = 15,
    seed: int = 0,
    names: Sequence[str] | None = None,
    dtype: str = "fp32",
) -> list[LayerLatency]:
    """Every eligible layer of ``model`` (module docstring) at every sparsity, dense and
    sparse, on its real input for ``batch`` examples of ``input_shape`` (C, H, W), with
    ``threads`` intra-op threads; rows ordered by layer, then sparsity. ``names`` narrows
    the layers to those named (e.g. a run's masked layers); ``dtype`` is the export's value
    type of the sparse forms."""
    _check_arguments(structure, sparsities, batch=batch, threads=threads, repeats=repeats)
    model = copy.deepcopy(model).eval()
    layers = eligible_layers(model, layer_types)
    if names is not None:  # a run's masked layers: its depthwise convs are not eligible
        eligible = layers
        layers = {name: eligible[name] for name in names if name in eligible}
        if not layers and eligible:
            raise ValueError(
                f"none of names {list(names)[:8]} is an eligible layer (Linear / groups=1 "
                f"Conv2d among layer_types {list(layer_types)}); eligible: "
                f"{', '.join(list(eligible)[:12])}"
            )
    if not layers:
        raise ValueError(
            f"the model has no Linear / groups=1 Conv2d among layer_types {list(layer_types)}"
        )
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(batch, *input_shape, generator=generator)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = capture_inputs(model, list(layers), example)
        rows = []
        for name, layer in layers.items():
            x = inputs[name]
            for sparsity in sparsities:
                mask = random_mask(layer.weight, sparsity, structure, generator)
                dense = copy.deepcopy(layer)
                with torch.no_grad():
                    dense.weight.mul_(mask)
                sparse, label, chosen = sparse_form(layer, mask, x, dtype)
                times = interleaved_medians({"dense": dense, "sparse": sparse}, x, repeats)
                rows.append(
                    LayerLatency(
                        name, describe(layer), tuple(x.shape), float(sparsity), structure,
                        times["dense"] * 1e6, times["sparse"] * 1e6, label, chosen,
                    )
                )  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    return rows


def meets_target(rows: Sequence[LayerLatency], target: float) -> dict[str, float | None]:
    """Layer -> the lowest sparsity whose speed-up is >= ``target``, or None if none is."""
    if not target > 0:
        raise ValueError(f"target={target} must be a positive speed-up (e.g. 1.5)")
    choice: dict[str, float | None] = {}
    for row in rows:
        choice.setdefault(row.name, None)
        if row.speedup >= target:
            current = choice[row.name]
            choice[row.name] = row.sparsity if current is None else min(current, row.sparsity)
    return choice


def densities_override(choice: Mapping[str, float | None]) -> str:
    """The ``sparsity.densities`` override of a training run for a target's choice: each
    layer's name as an escaped regex -> 1 - sparsity (1.0: the layer stays dense)."""
    items = []
    for name, sparsity in choice.items():
        density = 1.0 if sparsity is None else round(1.0 - sparsity, 6)
        items.append(f"{re.escape(name)}:{density:g}")
    return "sparsity.densities={" + ",".join(items) + "}"


def chosen_time(
    rows: Sequence[LayerLatency], choice: Mapping[str, float | None]
) -> tuple[float, float]:
    """(sum of the layers' dense times, sum at the choice: the sparse median at the chosen
    sparsity, the dense time where none is chosen), microseconds, over ``choice``'s layers:
    the time of these layers alone, not of the whole model. A layer's dense time is the
    median of its dense medians over the sparsities."""
    dense = {name: statistics.median(r.dense_us for r in rows if r.name == name) for name in choice}
    total = 0.0
    for name, sparsity in choice.items():
        hits = [r for r in rows if r.name == name and r.sparsity == sparsity]
        total += hits[0].sparse_us if hits else dense[name]
    return sum(dense[name] for name in choice), total


def table_markdown(rows: Sequence[LayerLatency]) -> str:
    """The table as Markdown: one row per layer and sparsity."""
    lines = [
        "| layer | shape | input | sparsity | dense us | sparse us | speed-up | sparse form "
        "| export picks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = "x".join(str(v) for v in r.input_shape)
        lines.append(
            f"| {r.name} | {r.layer} | {shape} | {r.sparsity:.2f} | {r.dense_us:.1f} | "
            f"{r.sparse_us:.1f} | {r.speedup:.2f}x | {r.format} | {r.export_format} |"
        )
    return "\n".join(lines)


def save_table(
    rows: Sequence[LayerLatency],
    out_dir: Path,
    settings: Mapping[str, Any],
    target: float | None = None,
) -> tuple[Path, Path]:
    """Writes ``latency_table.json`` (settings, rows with speed-ups, the target's choice)
    and ``latency_table.csv`` (one line per row) into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [{**asdict(r), "speedup": r.speedup} for r in rows]
    document = {
        "settings": dict(settings),
        "target": target,
        "choice": meets_target(rows, target) if target is not None else None,
        "rows": records,
    }
    json_path, csv_path = out_dir / "latency_table.json", out_dir / "latency_table.csv"
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        for record in records:
            writer.writerow({**record, "input_shape": "x".join(map(str, record["input_shape"]))})
    return json_path, csv_path
