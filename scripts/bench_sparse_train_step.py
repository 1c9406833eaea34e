"""Section ``step`` of ``bench_sparse_train.py``: whole training steps in condensed form
(``trainer.sparse_compute``, ``sst.condensed.training.SparseCompute``) against masked-dense
and dense training, in one process.

Models: the MLP 3072-1024-1024-10 and the CIFAR ResNet-18, batch 64, synthetic tensors, SGD
momentum 0.9 nesterov wd 5e-4, SRigL at 90% sparsity (ERK), delta_t 100. Variants:
- ``dense``: the model alone (no method);
- ``masked2``: SRigL, masked-dense with two masking passes a step (gradients and weights:
  sst before one-pass masking, and today under ``trainer.grad_clip``);
- ``masked``: SRigL, masked-dense (``sparse_compute=off``: one weight-masking pass a step);
- ``condensed``: SRigL with ``SparseCompute(mode="on")``: every step but the update step
  trains condensed; the update step expands, takes a dense step (the dense gradient for
  growth), updates the masks and the next step condenses again.
- ``auto``: the same with ``mode="auto"`` (``trainer.sparse_compute=auto``): only the layers
  measured faster condensed (timed in the warm-up) train condensed.

A step is what the loop runs: (``condense``/``expand``) + forward + cross-entropy + backward +
``before_step()`` + ``optimizer.step()`` + ``after_step()`` + ``zero_grad()``. Each round
times ``steps`` regular steps of every variant (balanced order), then one update step of each
(the method's step counter is moved to just before an update). Amortised step at delta_t:
``(median regular * (delta_t - 1) + median update) / delta_t``.

Memory: bytes of the parameters' storage, their gradients (after backward) and the optimizer
state, plus (condensed) the layouts' index tensors, after a regular step.

    python scripts/bench_sparse_train.py --section step            # 1 and 2 threads
    python scripts/bench_sparse_train.py --section step --quick    # smoke test
    python scripts/bench_sparse_train.py --section step --models resnet18 --step-rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from bench_train import balanced_order
from torch import nn

from sst import models
from sst.condensed.training import SparseCompute
from sst.sparsity import SRigL

BATCH = 64
CIFAR = (3, 32, 32)  # the input shape of both models
DELTA_T = 100
VARIANTS = ("dense", "masked2", "masked", "condensed", "auto")


@dataclass
class StepRun:
    """One variant on its own copy of the model."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: SRigL | None
    compute: SparseCompute | None


def make_run(name: str, builder: Callable[[], nn.Module], example: torch.Tensor) -> StepRun:
    torch.manual_seed(0)
    model = builder()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    if name == "dense":
        return StepRun(name, model, optimizer, None, None)
    method = SRigL(
        model,
        optimizer,
        density=0.1,
        distribution="erk",
        total_steps=10**7,
        delta_t=DELTA_T,
        example_input=example,
    )
    method.mask_set.mask_grads = name == "masked2"
    compute = None
    if name in ("condensed", "auto"):
        mode = "on" if name == "condensed" else "auto"
        compute = SparseCompute(model, optimizer, method.mask_set, mode=mode)
    return StepRun(name, model, optimizer, method, compute)


def one_step(run: StepRun, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one training step as the loop runs it."""
    start = time.perf_counter()
    method = run.method
    if run.compute is not None:
        if method.dense_step(method.step + 1):
            run.compute.expand()
        else:
            run.compute.condense()
    loss = F.cross_entropy(run.model(x), y)
    loss.backward()
    if method is not None:
        method.before_step()
    run.optimizer.step()
    if method is not None:
        method.after_step()
    run.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def to_update(run: StepRun) -> None:
    """Moves the method's counter so that its next step is an update step."""
    if run.method is not None:
        run.method.step = (run.method.step // DELTA_T + 1) * DELTA_T - 1


def past_update(run: StepRun) -> None:
    """Moves the counter off the step before an update (regular steps stay regular)."""
    if run.method is not None and (run.method.step + 1) % DELTA_T == 0:
        run.method.step += 1


def state_bytes(run: StepRun, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(parameters + gradients + optimizer state, masks + layouts' index tensors) right
    after a regular step's backward and optimizer step (gradients still held)."""
    past_update(run)
    if run.compute is not None:
        run.compute.condense()
    F.cross_entropy(run.model(x), y).backward()
    run.optimizer.step()
    total = 0
    for p in run.model.parameters():
        total += p.untyped_storage().nbytes()
        total += p.grad.untyped_storage().nbytes() if p.grad is not None else 0
    for state in run.optimizer.state.values():
        total += sum(v.untyped_storage().nbytes() for v in state.values() if torch.is_tensor(v))
    extra = 0
    if run.compute is not None:
        for entry in run.compute.condensed.values():
            for value in vars(entry.layout).values():
                extra += value.untyped_storage().nbytes() if torch.is_tensor(value) else 0
    if run.method is not None:
        extra += sum(m.untyped_storage().nbytes() for m in run.method.masks.values())
    run.optimizer.zero_grad(set_to_none=True)
    return total, extra


def time_model(label, builder, shape, args, threads) -> tuple[dict, dict]:
    """(regular, update) median ms per variant, interleaved."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, *shape, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    runs = [make_run(name, builder, x[:1]) for name in VARIANTS]
    steps = 3 if args.quick else args.step_rounds
    rounds = 2 if args.quick else 5
    regular: dict[str, list[float]] = {r.name: [] for r in runs}
    update: dict[str, list[float]] = {r.name: [] for r in runs}
    for run in runs:  # warm-up: a regular step, an update step, a regular step
        one_step(run, x, y)
        to_update(run)
        one_step(run, x, y)
        one_step(run, x, y)
    for rnd in range(rounds):
        order = balanced_order(runs, rnd)
        for _ in range(steps):
            for run in order:
                past_update(run)
                regular[run.name].append(1000.0 * one_step(run, x, y))
        for run in order:
            to_update(run)
            update[run.name].append(1000.0 * one_step(run, x, y))
    med = {k: statistics.median(v) for k, v in regular.items()}
    upd = {k: statistics.median(v) for k, v in update.items()}
    return med, upd


def amortised(regular: float, update: float) -> float:
    return (regular * (DELTA_T - 1) + update) / DELTA_T


def mlp() -> nn.Module:
    """The MLP 3072-1024-1024-10 of the whole-step and memory tables."""
    return models.mlp(10, (3, 32, 32), (1024, 1024))


def step_section(args: argparse.Namespace) -> None:
    """Whole training steps: the whole-step targets of docs/benchmarks.md."""
    all_cases = {
        "mlp": ("MLP 3072-1024-1024-10", mlp, CIFAR),
        "resnet18": ("ResNet-18 CIFAR", lambda: models.resnet18_cifar(10, CIFAR), CIFAR),
    }
    cases = [case for key, case in all_cases.items() if key in args.models]
    if args.quick:
        cases = cases[:1]
    print("\n### whole training step, SRigL 90% ERK, batch 64, delta_t 100 (median ms)")
    print(
        "| model | threads | dense | masked-dense 2 passes | masked-dense | condensed | update "
        "step masked / condensed | amortised masked / condensed | condensed vs masked | "
        "condensed vs dense | auto | auto amortised | auto vs dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for label, builder, shape in cases:
            reg, upd = time_model(label, builder, shape, args, threads)
            am_masked = amortised(reg["masked"], upd["masked"])
            am_cond = amortised(reg["condensed"], upd["condensed"])
            am_dense = reg["dense"]
            am_auto = amortised(reg["auto"], upd["auto"])
            print(
                f"| {label} | {threads} | {reg['dense']:.2f} | {reg['masked2']:.2f} | "
                f"{reg['masked']:.2f} | "
                f"{reg['condensed']:.2f} | {upd['masked']:.1f} / {upd['condensed']:.1f} | "
                f"{am_masked:.2f} / {am_cond:.2f} | {am_masked / am_cond:.2f}x | "
                f"{am_dense / am_cond:.2f}x | {reg['auto']:.2f} | {am_auto:.2f} | "
                f"{am_dense / am_auto:.2f}x |",
                flush=True,
            )
    print("\n### weights + gradients + optimizer state (+ masks, layouts), MLP, 90%")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, 3, 32, 32, generator=gen), torch.randint(0, 10, (BATCH,))
    measured = [name for name in VARIANTS if name != "auto"]  # auto: the choice needs steps
    sizes = {name: state_bytes(make_run(name, mlp, x[:1]), x, y) for name in measured}
    dense = sizes["dense"][0]
    print("| variant | weights + grads + state MiB | vs dense | + masks + layouts MiB | vs dense |")
    print("|---|---|---|---|---|")
    for name, (core, extra) in sizes.items():
        full = core + extra
        print(
            f"| {name} | {core / 2**20:.1f} | {core / dense:.2f}x | {full / 2**20:.1f} | "
            f"{full / dense:.2f}x |"
        )
