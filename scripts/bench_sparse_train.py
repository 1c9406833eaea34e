"""Training in condensed form on the CPU: speed against dense torch and SparseProp.

Section ``layer``: one layer, forward + backward (input, weight and bias gradients), each
variant timed side by side in one process:
- ``dense``: ``F.linear`` / ``F.conv2d`` on the masked weight (what masked-dense training
  runs), autograd backward;
- ``sst fan-in``: ``sst.condensed.sparse_train.sparse_linear`` / ``sparse_conv2d`` on a
  constant fan-in mask (every output keeps k = density * in inputs, chosen at random);
- ``sst CSR``: the same operators on an unstructured mask with the same number of weights
  (positions uniform over the matrix);
- ``SparseProp``: ``sparseprop.modules.SparseLinear`` / ``SparseConv2d`` (Nikdan et al., ICML
  2023; ``pip install --no-build-isolation sparseprop==0.1.14``, the ``bench`` extra) on that
  unstructured mask; skipped when not installed.

Cases: 3072 -> 768 and 1024 -> 1024, sparsity 90% and 95%, batch 64 and 256, plus the
ResNet-18 CIFAR layer3 conv (256 -> 256, 3x3, 8x8 input, batch 64) at 90%; at 1 and 2
threads (``torch.set_num_threads``). Protocol: every variant is warmed up, then in each of
``rounds`` rounds (15, ``--quick`` 3) every variant runs once in a balanced order
(``bench_train.balanced_order``: each one after every other equally often), each call timed
alone (``time.perf_counter``, gradients cleared outside the timing); the table gives
medians and the ratios of medians.

    python scripts/bench_sparse_train.py                      # all sections
    python scripts/bench_sparse_train.py --section layer      # one layer only
    python scripts/bench_sparse_train.py --section layer --quick   # smoke test
    python scripts/bench_sparse_train.py --section layer --threads 1 --clock cpu  # busy machine

On a shared machine wall-clock medians measure the neighbours as much as the kernels;
``--clock cpu`` (one thread) times the CPU this thread spends, which load barely moves.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from bench_sparse_train_step import step_section
from bench_train import balanced_order
from torch import Tensor

from sst.condensed.sparse_train import (
    build_layout,
    gather_values,
    kernel_info,
    sparse_conv2d,
    sparse_linear,
)

try:
    from sparseprop.modules import SparseConv2d as SPConv2d
    from sparseprop.modules import SparseLinear as SPLinear
except ImportError:  # the bench extra is not installed: SparseProp's columns stay empty
    SPConv2d = SPLinear = None

LINEAR_CASES = [(3072, 768), (1024, 1024)]
SPARSITIES = [0.9, 0.95]
BATCHES = [64, 256]
# ResNet-18 CIFAR layer3 conv: (in channels, out channels, kernel, spatial size, batch)
CONV_CASE = (256, 256, 3, 8, 64)


@dataclass
class Variant:
    """One contender: ``step`` runs forward + backward; ``params`` get their grads cleared."""

    name: str
    step: Callable[[], None]
    params: list[Tensor]


def fan_in_mask(out: int, inp: int, k: int, gen: torch.Generator) -> Tensor:
    """Every row keeps k inputs chosen at random."""
    idx = torch.rand(out, inp, generator=gen).argsort(1)[:, :k]
    return torch.zeros(out, inp).scatter_(1, idx, 1.0)


def unstructured_mask(out: int, inp: int, nnz: int, gen: torch.Generator) -> Tensor:
    """nnz positions uniform over the matrix."""
    mask = torch.zeros(out * inp)
    mask[torch.randperm(out * inp, generator=gen)[:nnz]] = 1.0
    return mask.view(out, inp)


def time_variants(
    variants: list[Variant], rounds: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Median seconds per call of each variant, interleaved in a balanced order."""
    for v in variants:  # warm-up: first-call allocations, caches
        for _ in range(2):
            v.step()
            clear(v)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in balanced_order(variants, r):
            start = clock()
            v.step()
            times[v.name].append(clock() - start)
            clear(v)
    return {name: statistics.median(t) for name, t in times.items()}


def clear(v: Variant) -> None:
    for p in v.params:
        p.grad = None


def linear_variants(inp: int, out: int, sparsity: float, batch: int) -> list[Variant]:
    gen = torch.Generator().manual_seed(0)
    k = round((1 - sparsity) * inp)
    fan_in = fan_in_mask(out, inp, k, gen)
    unstructured = unstructured_mask(out, inp, out * k, gen)
    weight = torch.randn(out, inp, generator=gen) / inp**0.5
    x = torch.randn(batch, inp, generator=gen).requires_grad_()
    g = torch.randn(batch, out, generator=gen)
    bias = torch.zeros(out, requires_grad=True)
    dense_w = (weight * unstructured).requires_grad_()
    variants = [Variant("dense", lambda: F.linear(x, dense_w, bias).backward(g), [x, dense_w])]
    for name, mask, kind in (("sst fan-in", fan_in, "fan_in"), ("sst CSR", unstructured, "csr")):
        layout = build_layout(mask, kind)
        values = gather_values(weight, layout).requires_grad_()
        variants.append(
            Variant(
                name,
                lambda v=values, lay=layout: sparse_linear(x, v, lay, bias).backward(g),
                [x, values],
            )
        )
    if SPLinear is not None:
        module = SPLinear((weight * unstructured).contiguous(), torch.nn.Parameter(bias.detach()))
        variants.append(Variant("SparseProp", lambda: module(x).backward(g), [x, module.W_val]))
    for v in variants:
        v.params.append(bias)
    return variants


def conv_variants(sparsity: float) -> list[Variant]:
    c_in, c_out, ks, size, batch = CONV_CASE
    gen = torch.Generator().manual_seed(0)
    fan = c_in * ks * ks
    k = round((1 - sparsity) * fan)
    fan_in = fan_in_mask(c_out, fan, k, gen).view(c_out, c_in, ks, ks)
    unstructured = unstructured_mask(c_out, fan, c_out * k, gen).view(c_out, c_in, ks, ks)
    weight = torch.randn(c_out, c_in, ks, ks, generator=gen) / fan**0.5
    x = torch.randn(batch, c_in, size, size, generator=gen).requires_grad_()
    g = torch.randn(batch, c_out, size, size, generator=gen)
    dense_w = (weight * unstructured).requires_grad_()
    variants = [
        Variant("dense", lambda: F.conv2d(x, dense_w, None, 1, 1).backward(g), [x, dense_w])
    ]
    for name, mask, kind in (("sst fan-in", fan_in, "fan_in"), ("sst CSR", unstructured, "csr")):
        layout = build_layout(mask, kind)
        values = gather_values(weight, layout).requires_grad_()

        def step(v=values, lay=layout):
            sparse_conv2d(x, v, lay, None, stride=1, padding=1, kernel_size=ks).backward(g)

        variants.append(Variant(name, step, [x, values]))
    if SPConv2d is not None:
        module = SPConv2d((weight * unstructured).contiguous(), None, padding=1, stride=1)
        variants.append(Variant("SparseProp", lambda: module(x).backward(g), [x, module.W_val]))
    return variants


HEADER = (
    "| layer | sparsity | batch | threads | dense ms | sst fan-in ms | sst CSR ms | SparseProp ms"
    " | fan-in vs dense | fan-in vs SparseProp | CSR vs dense | CSR vs SparseProp |"
)


def row(layer: str, sparsity: float, batch: int, threads: int, t: dict[str, float]) -> str:
    def ms(name: str) -> str:
        return f"{t[name] * 1e3:.2f}" if name in t else "-"

    def ratio(a: str, b: str) -> str:
        return f"{t[b] / t[a]:.2f}x" if a in t and b in t else "-"

    cells = [
        layer, f"{sparsity:.0%}", str(batch), str(threads), ms("dense"), ms("sst fan-in"),
        ms("sst CSR"), ms("SparseProp"), ratio("sst fan-in", "dense"),
        ratio("sst fan-in", "SparseProp"), ratio("sst CSR", "dense"),
        ratio("sst CSR", "SparseProp"),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def layer_section(args: argparse.Namespace) -> None:
    """One layer, forward + backward: the per-layer targets of docs/benchmarks.md."""
    rounds = 3 if args.quick else args.rounds
    batches = BATCHES[:1] if args.quick else BATCHES
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    print("### one layer, forward + backward (median ms; ratio = other's time / this one's)")
    print(f"clock: {args.clock} ({clock.__name__}), {rounds} rounds")
    print(f"kernels: {kernel_info()}; SparseProp: {'yes' if SPLinear else 'not installed'}\n")
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for inp, out in LINEAR_CASES:
            for sparsity in SPARSITIES:
                for batch in batches:
                    t = time_variants(linear_variants(inp, out, sparsity, batch), rounds, clock)
                    print(row(f"{inp} -> {out}", sparsity, batch, threads, t), flush=True)
        c_in, c_out, ks, size, batch = CONV_CASE
        t = time_variants(conv_variants(0.9), rounds, clock)
        layer = f"conv {c_in} -> {c_out} {ks}x{ks} @{size}x{size}"
        print(row(layer, 0.9, batch, threads, t), flush=True)


# Sections by name; each prints its own table. "step": whole training steps
# (bench_sparse_train_step.py, which documents its protocol).
SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "layer": layer_section,
    "step": step_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=[*SECTIONS, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="3 rounds, batch 64 only")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--step-rounds", type=int, default=20, help="step: regular steps a round")
    parser.add_argument(
        "--threads", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2],
        help="comma list of thread counts (default 1,2)",
    )  # fmt: skip
    parser.add_argument(
        "--models", type=lambda s: s.split(","), default=["mlp", "resnet18"],
        help="step: comma list of mlp, resnet18 (default both)",
    )  # fmt: skip
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall: time.perf_counter (default); cpu: this thread's CPU time "
        "(time.thread_time: robust on a shared machine, with --threads 1 only)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != [1]:
        parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1")
    for name, section in SECTIONS.items():
        if args.section in (name, "all"):
            section(args)


if __name__ == "__main__":
    main()
