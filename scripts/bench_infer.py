"""Inference speed of exported sparse models: dense vs torch CSR vs condensed vs structured
only, measured side by side in one process, next to each variant's memory-bandwidth bound.

Models (``--models``):
- ``layer``: the SRigL paper's layer, ViT-B/16's MLP projection 3072 -> 768 (Lasby et al.,
  ICLR 2024, report 3.4x over dense and 2.5x over CSR at 90% sparsity, batch 1, CPU);
- ``mlp``: ``sst.models.mlp(10, (3, 32, 32))`` (hidden 256, 256), uniform densities;
- ``resnet18``: ``sst.models.resnet18_cifar(10, (3, 32, 32))``, ERK densities (SRigL's),
  batches up to ``--resnet-max-batch`` (64: at 256 the CSR variant alone takes minutes);
- ``vit_mlp``: torchvision's ViT-B/16 ``MLPBlock(768, 3072)`` (Linear, GELU, Linear);
  its batch counts token rows (one 224x224 image is 197 rows).

Masks are constant fan-in (random, every surviving neuron holds k = budget // live weights);
``--ablate`` of the hidden neurons are ablated (not the output layer's; in the single layer
all rows may be ablated), and the freed budget goes to the surviving neurons, as SRigL does.
Weights are random: speed does not depend on the values. BN keeps its initial statistics.

Variants (each its own module, built for every sparsity, thread count and batch):
- ``dense``: the masked model as trained (torch Linear/Conv2d, zeros included, BN unfolded);
- ``csr``: ``condense(formats="csr")``: every sparse layer as a torch CSR matmul;
- ``condensed``: ``condense(example_input=x)``, the export for that batch: BN folded,
  ablated neurons removed where safe, each layer's format measured on its input at this
  batch size and thread count (condensed, or dense where that is faster); the single layer
  is ``CondensedLinear.from_linear``;
- ``structured``: ``condense(formats="dense")``: the same surgery with dense GEMMs, so the
  gain of structure alone; for the single layer, the live rows only.

Protocol: rounds (7 full, 2 quick; 3 for inputs of 4M elements or more); in each round every
variant runs its calls (about 30 ms worth) in a balanced order (each one after every other
equally often: ``bench_train.balanced_order``), each call timed alone (``time.perf_counter``)
under ``torch.inference_mode``; the tables give medians with the
IQR in brackets. A variant whose warm-up call takes over ``--slow-s`` (2 s: CSR convs at
batch 64) is timed once. Bandwidth: the faster of a 256 MiB tensor copy
(read + write) and a read-only max over it, at each thread count; a variant's bound is (the
weight, index and input bytes it reads, for the windowed kernel its padded layout) /
bandwidth. The target table adds a cold-cache run (a 64 MiB buffer written between calls)
and the condensed layer with bf16 values (``dtype=torch.bfloat16``), timed in the same
rounds as the others.
A last table gives each model's ``size_report`` totals and its saved export's file size,
raw and with ``compress=True`` (delta-coded indices through zlib).

    python scripts/bench_infer.py            # full run (7 min on 2 idle cores, 25 at load 10)
    python scripts/bench_infer.py --quick    # smoke test (17 s on 2 idle cores)

``--section unstructured`` runs instead the unstructured layers at batch 1:
Linear 1024 -> 1024 at 80% / 90% random unstructured sparsity (warm, and cold: a 64 MiB
buffer written between calls), every 1x1 conv shape of MobileNetV1 (224 input) at 80%, and
the whole ``sst.models.mobilenet.mobilenet_v1`` (1.0, 224, 1000 classes) with 80% random
masks on its 1x1 convs. Variants: dense FP32 (torch; for the model ``condense(formats=
"dense")``, BN folded), sparse FP32 / INT8 (``SparseLinear`` / ``SparseConv2d``; for the
model ``condense(example_input=x[, dtype="int8"])``, which also times sst's depthwise
kernel against torch's for the depthwise convs; ``dense_sst_depthwise`` is the dense
model with that kernel, to separate its gain from sparsity), and torch's dense INT8: dynamic
quantisation for the Linear, FX static quantisation (x86 backend, calibrated on x, fp32
in and out) for the 1x1 convs and the model. Medians of interleaved calls; ratios are
dense FP32 time / variant time.

    python scripts/bench_infer.py --section unstructured           # about 3 min idle
    python scripts/bench_infer.py --section unstructured --quick   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models.vision_transformer import MLPBlock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import balanced_order, iqr, log, machine_info, median

from sst import models
from sst.condensed import CondensedLinear, CSRLinear, condense, kernel_info, save, size_report
from sst.condensed import cpu as condensed_cpu
from sst.condensed.layers import CONDENSED_TYPES
from sst.condensed.size import COLUMNS, total
from sst.sparsity.distributions import erk

VARIANTS = ("dense", "csr", "condensed", "structured")
MODELS = ("layer", "mlp", "resnet18", "vit_mlp")
SPARSITIES = (0.8, 0.9, 0.95, 0.99)
BATCHES = (1, 8, 64, 256)
ROUND_S = 0.03  # target time of one variant's calls in one round


# ----------------------------------------------------------------------------- masks
def fan_in_mask(
    shape: tuple[int, ...], density: float, ablate: float, gen: torch.Generator
) -> torch.Tensor:
    """A random constant fan-in mask of ``density`` with ``ablate`` of the rows empty; the
    layer's budget int(numel * density) is shared by the surviving rows."""
    out, fan_in = shape[0], math.prod(shape[1:])
    dead = int(out * ablate)
    live = out - dead
    k = max(1, min(fan_in, int(out * fan_in * density) // live))
    order = torch.rand(live, fan_in, generator=gen).argsort(dim=1)[:, :k]
    mask = torch.zeros(out, fan_in, dtype=torch.bool)
    rows = torch.randperm(out, generator=gen)[:live]
    mask[rows] = torch.zeros(live, fan_in, dtype=torch.bool).scatter_(1, order, True)
    return mask.view(shape)


def model_masks(
    model: nn.Module, sparsity: float, ablate: float, distribution: str, protect: set[str]
) -> dict[str, torch.Tensor]:
    layers = {
        n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    shapes = {n: tuple(w.shape) for n, w in layers.items()}
    if distribution == "erk":
        densities = erk(shapes, 1 - sparsity)
    else:
        densities = dict.fromkeys(shapes, 1 - sparsity)
    gen = torch.Generator().manual_seed(0)
    masks = {}
    for name, shape in shapes.items():
        if densities[name] >= 1.0:
            continue
        masks[name] = fan_in_mask(shape, densities[name], 0 if name in protect else ablate, gen)
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].mul_(mask)
    return masks


# ----------------------------------------------------------------------------- models
@dataclass
class Spec:
    """A model to benchmark: builder, input of one example, mask distribution."""

    build: Callable[[], nn.Module]
    example: tuple[int, ...]
    distribution: str
    protect: Callable[[nn.Module], set[str]]


def last_layer(model: nn.Module) -> set[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return {names[-1]}


SPECS = {
    "layer": Spec(lambda: nn.Sequential(nn.Linear(3072, 768)), (3072,), "uniform", lambda m: set()),
    "mlp": Spec(lambda: models.mlp(10, (3, 32, 32)), (3, 32, 32), "uniform", last_layer),
    "resnet18": Spec(
        lambda: models.resnet18_cifar(10, (3, 32, 32)), (3, 32, 32), "erk", last_layer
    ),
    "vit_mlp": Spec(lambda: MLPBlock(768, 3072, 0.0), (768,), "uniform", last_layer),
}


class LiveRows(nn.Module):
    """The single layer's "structured only" form: a dense Linear over the live rows (the
    ablated rows' constant outputs would be folded into the next layer)."""

    def __init__(self, linear: nn.Linear, mask: torch.Tensor) -> None:
        super().__init__()
        live = mask.any(dim=1)
        self.linear = nn.Linear(linear.in_features, int(live.sum()))
        with torch.no_grad():
            self.linear.weight.copy_(linear.weight[live])
            self.linear.bias.copy_(linear.bias[live])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def build_variants(
    name: str, model: nn.Module, masks: dict, example: torch.Tensor
) -> dict[str, nn.Module]:
    """Every variant of one masked model; the condensed export measures on ``example``."""
    if name == "layer":
        linear, mask = model[0], masks["0"]
        return {
            "dense": copy.deepcopy(linear).eval(),
            "csr": CSRLinear.from_linear(linear, mask),
            "condensed": CondensedLinear.from_linear(linear, mask),
            "structured": LiveRows(linear, mask),
        }
    return {
        "dense": copy.deepcopy(model).eval(),
        "csr": condense(model, masks, formats="csr"),
        "condensed": condense(model, masks, example_input=example),
        "structured": condense(model, masks, formats="dense"),
    }


# ----------------------------------------------------------------------------- bytes, bandwidth
def read_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of parameters, buffers and indices the forward reads, plus the input."""
    total = x.numel() * x.element_size()
    for sub in module.modules():
        if isinstance(sub, CONDENSED_TYPES):
            kernel = sub._kernel
            layout = kernel.windowed() if isinstance(kernel, condensed_cpu.LinearKernel) else None
            small = x.numel() // max(1, x.shape[-1]) < condensed_cpu.SPMM_MIN_BATCH
            if layout is not None and small:
                total += condensed_cpu.windowed_bytes(layout)
            else:
                total += condensed_cpu.read_bytes(sub.matrix())
                total += 0 if sub.bias is None else sub.bias.numel() * 4
            continue
        for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
            total += tensor.numel() * tensor.element_size()
    return total


def memory_bandwidth(nbytes: int = 256 << 20, reps: int = 5) -> tuple[float, float]:
    """Bytes per second of a large tensor copy (counting the read and the write) and of a
    large read-only reduction, each the best of ``reps``."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    rates = []
    for op, moved in ((lambda: dst.copy_(src), 2 * nbytes), (lambda: src.max(), nbytes)):
        op()
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            op()
            best = min(best, time.perf_counter() - t0)
        rates.append(moved / best)
    return rates[0], rates[1]


# ----------------------------------------------------------------------------- timing
@dataclass
class Cell:
    """Per-call seconds of one variant at one (model, sparsity, batch, threads)."""

    times: list[float] = field(default_factory=list)
    bytes: int = 0

    @property
    def us(self) -> float:
        return median(self.times) * 1e6

    @property
    def iqr_us(self) -> float:
        return iqr(self.times) * 1e6


def calls_per_round(fn: Callable[[], object]) -> int:
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    return max(1, min(200, int(ROUND_S / max(one, 1e-7))))


def time_variants(
    variants: dict[str, nn.Module],
    x: torch.Tensor,
    rounds: int,
    flush: torch.Tensor | None,
    slow_s: float = float("inf"),
) -> dict[str, Cell]:
    """Per-call times of every variant, interleaved; a variant whose warm-up call takes
    longer than ``slow_s`` is timed once (its cell then has one sample)."""
    cells = {name: Cell() for name in variants}
    with torch.inference_mode():
        calls = {}
        for name, module in variants.items():
            t0 = time.perf_counter()
            module(x)  # warm-up (and the condensed kernels' lazy layouts)
            if time.perf_counter() - t0 > slow_s:
                calls[name] = 0
                t0 = time.perf_counter()
                module(x)
                cells[name].times.append(time.perf_counter() - t0)
            elif flush is not None:
                calls[name] = 3
            else:
                calls[name] = calls_per_round(lambda m=module: m(x))
        for r in range(rounds):
            for name in balanced_order(list(variants), r):
                module = variants[name]
                for _ in range(calls[name]):
                    if flush is not None:
                        flush.add_(1.0)
                    t0 = time.perf_counter()
                    module(x)
                    cells[name].times.append(time.perf_counter() - t0)
        for name, module in variants.items():
            cells[name].bytes = read_bytes(module, x)
    return cells


# ----------------------------------------------------------------------------- tables
@dataclass
class Row:
    model: str
    sparsity: float
    batch: int
    threads: int
    cells: dict[str, Cell]
    bandwidth: float

    def ratio(self, a: str, b: str) -> float:
        return self.cells[a].us / self.cells[b].us

    def bound_us(self, variant: str) -> float:
        return self.cells[variant].bytes / self.bandwidth * 1e6


def fmt(cell: Cell, bound: float) -> str:
    return f"{cell.us:,.1f} [{cell.iqr_us:,.1f}] ({bound:,.1f})"


def table(rows: list[Row]) -> list[str]:
    head = (
        "| sparsity | batch | dense µs | CSR µs | condensed µs | structured µs | dense / cond "
        "| CSR / cond | dense / struct | cond / bound |"
    )
    lines = [head, "|" + "---|" * 10]
    for row in rows:
        c = row.cells
        lines.append(
            f"| {row.sparsity:.0%} | {row.batch} | "
            + " | ".join(fmt(c[v], row.bound_us(v)) for v in VARIANTS)
            + f" | {row.ratio('dense', 'condensed'):.2f}x | {row.ratio('csr', 'condensed'):.2f}x"
            + f" | {row.ratio('dense', 'structured'):.2f}x"
            + f" | {c['condensed'].us / row.bound_us('condensed'):.2f} |"
        )
    return lines


# ----------------------------------------------------------------------------- runs
def bench_model(name: str, args, threads: int, bandwidth: float) -> list[Row]:
    spec = SPECS[name]
    rows = []
    for sparsity in args.sparsities:
        torch.manual_seed(0)
        model = spec.build().eval()
        masks = model_masks(model, sparsity, args.ablate, spec.distribution, spec.protect(model))
        for batch in args.batches:
            if name == "resnet18" and batch > args.resnet_max_batch:
                continue
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(batch, *spec.example, generator=gen)
            log(f"  {name} S={sparsity:.0%} threads={threads}: export at batch {batch}")
            variants = build_variants(name, model, masks, x)
            rounds = args.rounds if batch * math.prod(spec.example) < 1 << 22 else args.big_rounds
            cells = time_variants(variants, x, rounds, None, args.slow_s)
            rows.append(Row(name, sparsity, batch, threads, cells, bandwidth))
            log(
                f"  {name} S={sparsity:.0%} B={batch} t={threads}: "
                + ", ".join(f"{v} {cells[v].us:,.1f}us" for v in VARIANTS)
            )
    return rows


# Condensed variants of the target table, by the dtype of their values.
TARGET_VALUES = {"fp32": "condensed", "bf16": "condensed_bf16"}


def bench_target(args, threads: int, bandwidth: float) -> tuple[list[str], dict]:
    """3072 -> 768, 90% sparsity, batch 1, no ablated neuron: warm and cold cache, the
    condensed layer with fp32 and with bf16 values, all timed in the same rounds.
    Returns the table and, per cache and value type, (dense / cond, CSR / cond,
    cond / bound)."""
    torch.manual_seed(0)
    model = SPECS["layer"].build().eval()
    masks = model_masks(model, 0.9, 0.0, "uniform", set())
    variants = build_variants("layer", model, masks, torch.randn(1, 3072))
    del variants["structured"]  # nothing is ablated
    variants["condensed_bf16"] = CondensedLinear.from_linear(
        model[0], masks["0"], dtype=torch.bfloat16
    )
    x = torch.randn(1, 3072)
    flush = torch.zeros(16 << 20)
    lines = [
        "| cache | values | dense µs | CSR µs | condensed µs | dense / cond | CSR / cond "
        "| fp32 / this | cond bound µs | cond / bound |",
        "|" + "---|" * 10,
    ]
    results: dict[str, dict[str, tuple[float, float, float]]] = {}
    for cache, buffer in (("warm", None), ("cold", flush)):
        cells = time_variants(variants, x, args.rounds * (1 if buffer is None else 10), buffer)
        d, s = cells["dense"].us, cells["csr"].us
        fp32 = cells["condensed"].us
        results[cache] = {}
        for values, name in TARGET_VALUES.items():
            cell = cells[name]
            bound = cell.bytes / bandwidth * 1e6
            c = cell.us
            results[cache][values] = (d / c, s / c, c / bound)
            lines.append(
                f"| {cache} | {values} | {d:,.1f} [{cells['dense'].iqr_us:,.1f}] | {s:,.1f} "
                f"[{cells['csr'].iqr_us:,.1f}] | {c:,.1f} [{cell.iqr_us:,.1f}] | "
                f"{d / c:.2f}x | {s / c:.2f}x | {fp32 / c:.2f}x | {bound:,.1f} | {c / bound:.2f} |"
            )
    return lines, results


def verdicts(rows: list[Row], target: dict[int, dict]) -> list[str]:
    lines = []
    cases = [
        (threads, cache, values, ratios)
        for threads, res in sorted(target.items())
        for cache, by_values in res.items()
        for values, ratios in by_values.items()
    ]
    for threads, cache, values, (vs_dense, vs_csr, vs_bound) in cases:
        lines.append(
            f"- 3072->768, S=90%, batch 1, {threads} thread(s), {cache} cache, {values}: "
            f"{vs_dense:.2f}x dense (target >= 4: {'met' if vs_dense >= 4 else 'MISSED'}), "
            f"{vs_csr:.2f}x CSR (target >= 3: {'met' if vs_csr >= 3 else 'MISSED'}), "
            f"{vs_bound:.2f}x the bandwidth bound (target <= 1.5: "
            f"{'met' if vs_bound <= 1.5 else 'MISSED'})"
        )
    for model in ("resnet18", "mlp"):
        sub = [r for r in rows if r.model == model and r.sparsity >= 0.9 - 1e-9]
        if sub:
            worst = min(sub, key=lambda r: r.ratio("dense", "condensed"))
            ok = all(r.ratio("dense", "condensed") > 1 for r in sub)
            lines.append(
                f"- whole {model} faster than dense at >= 90%: {'met' if ok else 'MISSED'} "
                f"(lowest {worst.ratio('dense', 'condensed'):.2f}x at S={worst.sparsity:.0%}, "
                f"batch {worst.batch}, {worst.threads} thread(s))"
            )
    sub = [r for r in rows if r.sparsity >= 0.9 - 1e-9]
    slower = [r for r in sub if r.ratio("dense", "condensed") < 1]
    if sub:
        lines.append(
            f"- never slower than dense at >= 90%: {'met' if not slower else 'MISSED'} "
            f"({len(sub) - len(slower)} of {len(sub)} cells faster)"
            + "".join(
                f"; {r.model} S={r.sparsity:.0%} B={r.batch} t={r.threads}: "
                f"{r.ratio('dense', 'condensed'):.2f}x"
                for r in slower
            )
        )
    return lines


def sizes(args) -> list[str]:
    """Size report totals per model and sparsity (KiB), and the saved files' sizes."""
    head = "| model | sparsity | " + " | ".join(COLUMNS) + " | file | file, compressed |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = SPECS[name]
            for sparsity in args.sparsities:
                torch.manual_seed(0)
                model = spec.build().eval()
                masks = model_masks(
                    model, sparsity, args.ablate, spec.distribution, spec.protect(model)
                )
                sums = total(size_report(masks))
                exported = condense(model, masks)
                files = []
                for compress in (False, True):
                    path = Path(tmp) / f"{name}-{compress}.safetensors"
                    save(exported, path, compress=compress)
                    files.append(path.stat().st_size)
                cells = ["n/a" if sums[c] is None else f"{sums[c] / 1024:,.1f}" for c in COLUMNS]
                lines.append(
                    f"| {name} | {sparsity:.0%} | "
                    + " | ".join(cells)
                    + f" | {files[0] / 1024:,.1f} | {files[1] / 1024:,.1f} |"
                )
    return lines


# ----------------------------------------------------------------------------- unstructured
# MobileNetV1's 1x1 convs at 224 input: (in, out, H = W)
MOBILENET_POINTWISE = (
    (32, 64, 112), (64, 128, 56), (128, 128, 56), (128, 256, 28), (256, 256, 28),
    (256, 512, 14), (512, 512, 14), (512, 1024, 7), (1024, 1024, 7),
)  # fmt: skip


def random_mask(shape: tuple[int, ...], sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Exactly round((1 - sparsity) * numel) active weights at random positions."""
    numel = math.prod(shape)
    keep = round((1 - sparsity) * numel)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=gen)[:keep]] = True
    return mask.view(shape)


def ratio_cells(cells: dict[str, Cell], names: list[str]) -> str:
    times = " | ".join(f"{cells[n].us:,.1f}" for n in names)
    ratios = " | ".join(f"{cells['dense'].us / cells[n].us:.2f}x" for n in names[1:])
    return f"{times} | {ratios}"


def unstructured_linear(args, flush: torch.Tensor) -> list[str]:
    from sst.condensed.unstructured import SparseLinear

    names = ["dense", "sparse", "sparse_int8", "torch_int8"]
    lines = [
        "| sparsity | cache | " + " | ".join(f"{n} µs" for n in names) + " | "
        + " | ".join(f"dense / {n}" for n in names[1:]) + " |",
        "|" + "---|" * (2 * len(names) + 1),
    ]  # fmt: skip
    for sparsity in args.sparsities:
        gen = torch.Generator().manual_seed(0)
        linear = nn.Linear(1024, 1024).eval()
        mask = random_mask((1024, 1024), sparsity, gen)
        with torch.no_grad():
            linear.weight.mul_(mask)
        variants = {
            "dense": linear,
            "sparse": SparseLinear.from_linear(linear, mask),
            "sparse_int8": SparseLinear.from_linear(linear, mask, dtype=torch.int8),
            "torch_int8": torch_dynamic_int8(linear),
        }
        x = torch.randn(1, 1024, generator=gen)
        for cache, buffer in (("warm", None), ("cold", flush)):
            cells = time_variants(variants, x, args.rounds, buffer)
            lines.append(f"| {sparsity:.0%} | {cache} | {ratio_cells(cells, names)} |")
    return lines


def torch_dynamic_int8(module: nn.Module) -> nn.Module:
    """torch's dense INT8 Linear (dynamic activation quantisation, int8 weights)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            nn.Sequential(module), {nn.Linear}, dtype=torch.qint8
        )


def torch_static_int8(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """torch's dense INT8 (FX static quantisation, x86 backend, calibrated on x): fp32 in
    and out, as the sparse modules, so the (de)quantisation is part of its time."""
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(
            copy.deepcopy(module).eval(), get_default_qconfig_mapping("x86"), (x,)
        )
        with torch.inference_mode():
            prepared(x)
        return convert_fx(prepared)


def unstructured_pointwise(args) -> list[str]:
    from sst.condensed.unstructured import SparseConv2d

    names = ["dense", "sparse", "sparse_int8", "torch_int8"]
    lines = [
        "| 1x1 conv | H x W | " + " | ".join(f"{n} µs" for n in names) + " | "
        + " | ".join(f"dense / {n}" for n in names[1:]) + " |",
        "|" + "---|" * (2 * len(names) + 1),
    ]  # fmt: skip
    for c_in, c_out, size in MOBILENET_POINTWISE:
        gen = torch.Generator().manual_seed(c_in + c_out)
        conv = nn.Conv2d(c_in, c_out, 1, bias=False).eval()
        mask = random_mask(tuple(conv.weight.shape), 0.8, gen)
        with torch.no_grad():
            conv.weight.mul_(mask)
        variants = {
            "dense": conv,
            "sparse": SparseConv2d.from_conv(conv, mask),
            "sparse_int8": SparseConv2d.from_conv(conv, mask, dtype=torch.int8),
        }
        x = torch.randn(1, c_in, size, size, generator=gen)
        variants["torch_int8"] = torch_static_int8(nn.Sequential(conv), x)
        cells = time_variants(variants, x, args.rounds, None)
        lines.append(f"| {c_in} -> {c_out} | {size}x{size} | {ratio_cells(cells, names)} |")
    return lines


def mobilenet_variants(sparsity: float) -> tuple[dict[str, nn.Module], torch.Tensor]:
    """The whole MobileNetV1 (1.0, 224) in its four forms, and the input."""
    from sst.condensed.depthwise import DepthwiseConv2d, is_depthwise3x3
    from sst.condensed.surgery import set_submodule
    from sst.models.mobilenet import mobilenet_v1

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = mobilenet_v1(1000, (3, 224, 224), width=1.0)
    with torch.no_grad():  # BN statistics of random inputs, so that activations vary
        model.train()(torch.randn(4, 3, 224, 224, generator=gen))
    model.eval()
    masks = {
        name: random_mask(tuple(m.weight.shape), sparsity, gen)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
    }
    x = torch.randn(1, 3, 224, 224, generator=gen)
    dense = condense(model, masks, formats="dense")
    torch_int8 = torch_static_int8(dense, x)
    dense_dw = copy.deepcopy(dense)  # the same dense model on sst's depthwise kernel
    for name, module in list(dense_dw.named_modules()):
        if is_depthwise3x3(module):
            set_submodule(dense_dw, name, DepthwiseConv2d.from_conv(module))
    variants = {
        "dense": dense,
        "dense_sst_depthwise": dense_dw,
        "sparse": condense(model, masks, example_input=x),
        "sparse_int8": condense(model, masks, example_input=x, dtype=torch.int8),
        "torch_int8": torch_int8,
    }
    return variants, x


def unstructured_model(args) -> list[str]:
    variants, x = mobilenet_variants(0.8)
    names = list(variants)
    cells = time_variants(variants, x, args.rounds, None)
    with torch.inference_mode():
        reference = variants["dense"](x)
        scale = float(reference.abs().max())
        errors = {n: float((variants[n](x) - reference).abs().max()) / scale for n in names}
    lines = [
        "| variant | µs | dense FP32 / variant | torch INT8 / variant | max abs error / max abs |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        lines.append(
            f"| {n} | {cells[n].us:,.0f} | {cells['dense'].us / cells[n].us:.2f}x | "
            f"{cells['torch_int8'].us / cells[n].us:.2f}x | {errors[n]:.2g} |"
        )
    return lines


def unstructured_section(args) -> None:
    print("# Unstructured layers at batch 1 and INT8 (scripts/bench_infer.py)\n")
    print("\n".join(machine_info(torch.device("cpu"))))
    print(f"- condensed kernels: {kernel_info()}")
    print(f"- command: python scripts/bench_infer.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"- cells: median µs per call over {args.rounds} interleaved rounds\n")
    flush = torch.zeros(16 << 20)  # 64 MiB written between calls: a cold cache
    for threads in args.threads:
        torch.set_num_threads(threads)
        log(f"threads={threads}: unstructured section")
        print(f"## {threads} thread(s)\n")
        print("Linear 1024 -> 1024, batch 1, random unstructured masks:\n")
        print("\n".join(unstructured_linear(args, flush)) + "\n")
        print("MobileNetV1 (224) 1x1 convs, 80% random unstructured, batch 1:\n")
        print("\n".join(unstructured_pointwise(args)) + "\n")
        print("Whole MobileNetV1 (1.0, 224), 80% random masks on the 1x1 convs, batch 1:\n")
        print("\n".join(unstructured_model(args)) + "\n")
        sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--section", choices=("all", "unstructured"), default="all",
        help="all: the condensed benchmark; unstructured: the unstructured batch-1 tables",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke test: S=90%%, 2 rounds")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--ablate", type=float, default=0.1, help="ablated hidden neurons")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--big-rounds", type=int, default=3, help="rounds for large inputs")
    parser.add_argument(
        "--slow-s", type=float, default=2.0, help="a variant slower than this is timed once"
    )
    parser.add_argument(
        "--resnet-max-batch", type=int, default=64, help="largest ResNet-18 batch (CSR is slow)"
    )
    args = parser.parse_args(argv)
    if args.section == "unstructured" and args.sparsities == list(SPARSITIES):
        args.sparsities = [0.8, 0.9]
    if args.quick:
        args.sparsities, args.rounds, args.big_rounds = [0.9], 2, 1
        args.batches = [1, 8]
        args.resnet_max_batch = 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.section == "unstructured":
        unstructured_section(args)
        return
    print("# Inference benchmark: dense vs CSR vs condensed vs structured only\n")
    print("\n".join(machine_info(torch.device("cpu"))))
    print(f"- condensed kernels: {kernel_info()}")
    print(f"- command: python scripts/bench_infer.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"- cells: median µs per call [IQR] (bandwidth bound µs); rounds {args.rounds} "
        f"({args.big_rounds} for large inputs); ablated hidden neurons {args.ablate:.0%}\n"
    )
    rows: list[Row] = []
    target: dict[int, dict] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        copy_rate, read_rate = memory_bandwidth()
        bandwidth = max(copy_rate, read_rate)  # the faster rate gives the tighter bound
        print(
            f"## {threads} thread(s): memory bandwidth {bandwidth / 1e9:.1f} GB/s (copy "
            f"{copy_rate / 1e9:.1f}, read-only {read_rate / 1e9:.1f})\n"
        )
        log(f"threads={threads}: target layer")
        lines, target[threads] = bench_target(args, threads, bandwidth)
        print("Target layer 3072 -> 768, 90% sparsity, batch 1, no ablated neuron:\n")
        print("\n".join(lines) + "\n")
        for name in args.models:
            model_rows = bench_model(name, args, threads, bandwidth)
            rows += model_rows
            print(f"### {name}, {threads} thread(s)\n")
            print("\n".join(table(model_rows)) + "\n")
            sys.stdout.flush()
    print("## Sizes (KiB): masked layers' totals (size_report) and the saved exports\n")
    print("\n".join(sizes(args)) + "\n")
    print("## Verdicts\n")
    print("\n".join(verdicts(rows, target)))


if __name__ == "__main__":
    main()
