"""GPU benchmarks of sst, each side by side in one process, timed with CUDA events.

(a) ``training``: what RigL and SRigL add to a training step of the CIFAR ResNet-18
    (``resnet18_cifar(10, (3, 32, 32))``, batch 128 of synthetic tensors, SGD lr 0.1 momentum
    0.9 nesterov wd 5e-4, density 0.1 ERK, delta_t 100, SRigL gamma_sal 0.3) against dense.
    A step is sst's own ``TrainStep`` (forward, cross-entropy, backward, the sparsity hook
    around the optimizer step; no hook for dense). A timed block is delta_t consecutive
    steps, so it holds exactly one topology update with its dense-gradient capture: the
    block's time per step is the amortised step. Each step also has its own pair of events,
    so the table gives the ordinary step and the update step apart.
(b) ``condensed``: the SRigL paper's layer, 3072 -> 768 at 90% sparsity (random constant
    fan-in mask, no ablated neuron), fp32, batch 1 and 256: dense ``nn.Linear`` (zeros
    included) against ``CSRLinear`` (torch sparse CSR, i.e. cuSPARSE) and ``CondensedLinear``
    (the Triton kernel). Lasby et al. (ICLR 2024) report 1.7x dense and 13x CSR at batch
    256 on a GPU.
(c) ``semi_structured``: a 4096 x 4096 Linear at batch 1024 in fp16, dense against its 2:4
    form from ``sst.condensed.semi_structured`` (``to_sparse_semi_structured``; the CUTLASS
    backend as well when the default is cuSPARSELt). The A100 2:4 articles report 1.5-2x
    for large GEMMs.

Protocol: untimed warm-up, then rounds; in every round each variant runs its block in a
balanced order (each one after every other equally often), between two CUDA events (the
block is synchronised before its time is read). Tables give medians over the rounds (IQR in
brackets), in the style of ``bench_train.py`` / ``bench_infer.py``.

Without CUDA (or Triton, or sm_80 for 2:4) a benchmark prints that it was skipped and why;
the script then exits 0. It exits 1 when a benchmark that could run raised. ``--status
FILE`` writes each benchmark's status and seconds as JSON (``scripts/gpu_check.sh`` reads
it).

    python scripts/bench_gpu.py                     # all three
    python scripts/bench_gpu.py --quick             # smoke test
    python scripts/bench_gpu.py --only condensed    # one of them
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import fan_in_mask
from bench_train import (
    balanced_order,
    cpu_model,
    iqr,
    log,
    make_method,
    make_optimizer,
    median,
    sst_commit,
)

import sst
from sst import models
from sst.condensed import CondensedLinear, CSRLinear
from sst.condensed import gpu as condensed_gpu
from sst.engine.hooks import SparsityHook
from sst.engine.precision import Precision
from sst.engine.settings import TrainerSettings
from sst.engine.step import LossWindow, TrainStep
from sst.sparsity.structure import Structure

BENCHMARKS = ("training", "condensed", "semi_structured")
TRAIN_METHODS = ("dense", "rigl", "srigl")
TRAIN_BATCH = 128
LAYER = (3072, 768)  # in, out
LAYER_BATCHES = (1, 256)
GEMM = (4096, 4096, 1024)  # in, out, batch
BLOCK_MS = 20.0  # target time of one variant's block in one round (layer and GEMM)


class Skipped(Exception):
    """A benchmark that cannot run here; the message says why."""


@dataclass(frozen=True)
class Plan:
    """Full and --quick sizes."""

    rounds: int
    delta_t: int  # training: steps per block (one update each)
    layer_rounds: int


PLANS = {False: Plan(rounds=5, delta_t=100, layer_rounds=7), True: Plan(2, 10, 2)}


# ----------------------------------------------------------------------------- timing
def block_ms(fn: Callable[[], object], calls: int) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls, between two CUDA events."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def calls_for(fn: Callable[[], object], target_ms: float = BLOCK_MS) -> int:
    """Calls that fill about ``target_ms``, from a 10-call probe (after one warm-up call)."""
    fn()
    one = block_ms(fn, 10)
    return max(3, min(2000, int(target_ms / max(one, 1e-4))))


def timed_variants(
    variants: dict[str, Callable[[], object]], rounds: int
) -> dict[str, list[float]]:
    """Per-call milliseconds of every variant, one sample per round, balanced order."""
    calls = {name: calls_for(fn) for name, fn in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in balanced_order(list(variants), r):
            times[name].append(block_ms(variants[name], calls[name]))
    return times


def cell(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{median(values) * scale:,.{digits}f} [{iqr(values) * scale:,.{digits}f}]"


# ----------------------------------------------------------------------------- machine
def versions() -> list[str]:
    """The card, torch, CUDA and the libraries the benchmarks use."""
    lines = [
        f"- torch {torch.__version__} (built for CUDA {torch.version.cuda}), "
        f"Python {platform.python_version()}, sst {getattr(sst, '__version__', '?')}, "
        f"commit {sst_commit()}",
        f"- CPU: {cpu_model()}",
    ]
    if not torch.cuda.is_available():
        return [*lines, "- GPU: none (no CUDA device is visible)"]
    props = torch.cuda.get_device_properties(0)
    lines.append(
        f"- GPU: {props.name}, sm_{props.major}{props.minor}, "
        f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs "
        f"({torch.cuda.device_count()} visible)"
    )
    lines.append(f"- NVIDIA driver {driver_version()}, CUDA runtime {torch.version.cuda}")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    cusparselt = getattr(torch.backends, "cusparselt", None)
    cusparselt_version = cusparselt.version() if cusparselt and cusparselt.is_available() else None
    lines.append(
        f"- cuDNN {torch.backends.cudnn.version()}, Triton {triton_version}, "
        f"cuSPARSELt {cusparselt_version or 'not available'}"
    )
    lines.append(
        f"- TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, "
        f"cuDNN {torch.backends.cudnn.allow_tf32}; cudnn.benchmark "
        f"{torch.backends.cudnn.benchmark}"
    )
    return lines


def driver_version() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown"


def need_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise Skipped("no CUDA device is visible")
    return torch.device("cuda", torch.cuda.current_device())


# ----------------------------------------------------------------------------- (a) training
@dataclass
class TrainRun:
    """One method's model, its sst train step, and what was measured."""

    name: str
    step: Callable[[], None]
    method: object | None
    block_ms: list[float] = field(default_factory=list)  # per step, one per round
    plain_ms: list[float] = field(default_factory=list)  # steps without an update
    update_ms: list[float] = field(default_factory=list)  # the update steps

    def next_is_update(self) -> bool:
        method = self.method
        return method is not None and method.is_update_step(method.step + 1)


def train_run(name: str, args, delta_t: int, device, x, y) -> TrainRun:
    torch.manual_seed(0)  # every method starts from the same weights
    model = models.resnet18_cifar(10, (3, 32, 32)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model)
    method = None
    hooks = []
    if name != "dense":
        method = make_method(name, model, optimizer, 0.1, delta_t, x[:1])
        hooks = [SparsityHook(method)]
    settings = TrainerSettings(
        epochs=1,
        max_steps=None,
        batch_size=TRAIN_BATCH,
        eval_batch_size=TRAIN_BATCH,
        grad_accumulation=1,
        label_smoothing=0.0,
        grad_clip=None,
        amp=args.amp,
        channels_last=args.channels_last,
        deterministic=False,
        device="cuda",
        num_workers=0,
        log_every=50,
        eval_every_epochs=1,
        checkpoint_every_epochs=1,
        progress_bar=False,
    )
    precision = Precision(args.amp, device)
    step = TrainStep(model, optimizer, hooks, settings, precision, device, LossWindow(device))
    step.set_lr(1.0)
    batches = itertools.repeat((x, y))
    return TrainRun(name, lambda: step(batches), method)


def timed_block(run: TrainRun, steps: int, record: bool) -> None:
    """``steps`` steps with an event between every two; one update among them."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    updates = []
    events[0].record()
    for i in range(steps):
        updates.append(run.next_is_update())
        run.step()
        events[i + 1].record()
    events[-1].synchronize()
    if not record:
        return
    run.block_ms.append(events[0].elapsed_time(events[-1]) / steps)
    for i, update in enumerate(updates):
        ms = events[i].elapsed_time(events[i + 1])
        (run.update_ms if update else run.plain_ms).append(ms)


def bench_training(plan: Plan, args) -> list[str]:
    device = need_cuda()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TRAIN_BATCH, 3, 32, 32, generator=gen).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (TRAIN_BATCH,), generator=gen).to(device)
    runs = [train_run(name, args, plan.delta_t, device, x, y) for name in TRAIN_METHODS]
    log("[training] warm-up")
    for run in runs:
        timed_block(run, plan.delta_t, record=False)
    for r in range(plan.rounds):
        log(f"[training] round {r + 1}/{plan.rounds}")
        for run in balanced_order(runs, r):
            timed_block(run, plan.delta_t, record=True)
    dense = median(runs[0].block_ms)
    lines = [
        f"### (a) Training step, CIFAR ResNet-18, batch {TRAIN_BATCH} "
        f"(amp {args.amp}, channels_last {args.channels_last}; {plan.rounds} rounds of "
        f"{plan.delta_t} steps per method, one update per round at ΔT={plan.delta_t})",
        "",
        "| method | amortised ms/step | overhead vs dense | ordinary step ms | "
        "update step ms | updates timed |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        amortised = median(run.block_ms)
        overhead = "—" if run.name == "dense" else f"{100 * (amortised / dense - 1):+.1f}%"
        update = cell(run.update_ms, digits=2) if run.update_ms else "—"
        lines.append(
            f"| {run.name} | {cell(run.block_ms, digits=3)} | {overhead} | "
            f"{cell(run.plain_ms, digits=3)} | {update} | {len(run.update_ms)} |"
        )
    return lines


# ----------------------------------------------------------------------------- (b) condensed
def bench_condensed(plan: Plan, args) -> list[str]:
    device = need_cuda()
    fan_in, out = LAYER
    torch.manual_seed(0)
    linear = nn.Linear(fan_in, out)
    mask = fan_in_mask((out, fan_in), 0.1, 0.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        linear.weight.mul_(mask)
    modules = {
        "dense": copy.deepcopy(linear).to(device).eval(),
        "csr": CSRLinear.from_linear(linear, mask).to(device),
        "condensed": CondensedLinear.from_linear(linear, mask).to(device),
    }
    kernel = "Triton" if condensed_gpu.triton_available() else "PyTorch fallback: no Triton"
    lines = [
        f"### (b) Condensed layer {fan_in} -> {out}, 90% sparsity, fp32 "
        f"(condensed: {kernel}; {plan.layer_rounds} rounds)",
        "",
        "| batch | dense µs | CSR (cuSPARSE) µs | condensed µs | dense / condensed | "
        "CSR / condensed | max error vs dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in LAYER_BATCHES:
        x = torch.randn(batch, fan_in, generator=torch.Generator().manual_seed(batch))
        x = x.to(device)
        with torch.inference_mode():
            reference = modules["dense"](x)
            error = max(float((m(x) - reference).abs().max()) for m in modules.values())
            variants = {name: (lambda m=m, x=x: m(x)) for name, m in modules.items()}
            log(f"[condensed] batch {batch}")
            times = timed_variants(variants, plan.layer_rounds)
        d, s, c = (median(times[v]) for v in ("dense", "csr", "condensed"))
        lines.append(
            f"| {batch} | {cell(times['dense'], 1000)} | {cell(times['csr'], 1000)} | "
            f"{cell(times['condensed'], 1000)} | {d / c:.2f}x | {s / c:.2f}x | {error:.2e} |"
        )
    lines += ["", "Lasby et al. (ICLR 2024), batch 256 on a GPU: 1.7x dense, 13x CSR."]
    return lines


# ----------------------------------------------------------------------------- (c) 2:4
def bench_semi_structured(plan: Plan, args) -> list[str]:
    device = need_cuda()
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise Skipped(f"2:4 sparse tensor cores need sm_80+, this device is sm_{major}{minor}")
    from torch.sparse import SparseSemiStructuredTensor

    from sst.condensed.semi_structured import semi_structured

    fan_in, out, batch = GEMM
    torch.manual_seed(0)
    linear = nn.Linear(fan_in, out).to(device, torch.float16).eval()
    structure = Structure("nm", 2, 4)
    with torch.no_grad():
        linear.weight.mul_(structure.top_mask(linear.weight.abs().float(), 2))
    x = torch.randn(batch, fan_in, device=device, dtype=torch.float16)
    modules: dict[str, nn.Module] = {"dense": linear}
    default = semi_structured(linear, torch.float16)
    modules[f"2:4 sst ({type(default.weight).__name__})"] = default
    if (
        not SparseSemiStructuredTensor._FORCE_CUTLASS
        and "CUTLASS" not in type(default.weight).__name__.upper()
    ):
        SparseSemiStructuredTensor._FORCE_CUTLASS = True
        try:
            cutlass = semi_structured(linear, torch.float16)
        finally:
            SparseSemiStructuredTensor._FORCE_CUTLASS = False
        modules[f"2:4 ({type(cutlass.weight).__name__})"] = cutlass
    flops = 2.0 * batch * fan_in * out
    lines = [
        f"### (c) 2:4 semi-structured, Linear {fan_in} x {out}, batch {batch}, fp16 "
        f"({plan.layer_rounds} rounds)",
        "",
        "| variant | µs | dense / this | TFLOP/s (dense-equivalent) | max error vs dense |",
        "|---|---|---|---|---|",
    ]
    with torch.inference_mode():
        reference = linear(x)
        errors = {name: float((m(x) - reference).abs().max()) for name, m in modules.items()}
        log("[semi_structured] timing")
        times = timed_variants(
            {name: (lambda m=m: m(x)) for name, m in modules.items()}, plan.layer_rounds
        )
    dense = median(times["dense"])
    for name, values in times.items():
        ms = median(values)
        lines.append(
            f"| {name} | {cell(values, 1000)} | {dense / ms:.2f}x | "
            f"{flops / (ms / 1000) / 1e12:,.0f} | {errors[name]:.2e} |"
        )
    lines += ["", "A100 2:4 articles: 1.5-2x dense for large GEMMs."]
    return lines


BENCHES: dict[str, Callable[[Plan, argparse.Namespace], list[str]]] = {
    "training": bench_training,
    "condensed": bench_condensed,
    "semi_structured": bench_semi_structured,
}
TITLES = {
    "training": "(a) Training step overhead of RigL and SRigL",
    "condensed": "(b) Condensed layer against dense and cuSPARSE CSR",
    "semi_structured": "(c) 2:4 semi-structured against dense",
}


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke test")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--amp", default="none", choices=("none", "bf16"), help="(a) only")
    parser.add_argument("--channels-last", action="store_true", help="(a) only")
    parser.add_argument("--status", type=Path, default=None, help="write statuses as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = PLANS[args.quick]
    started = time.perf_counter()
    given = sys.argv[1:] if argv is None else argv
    out = ["## GPU benchmarks", "", *versions(), ""]
    out += [f"Command: `{' '.join(['python scripts/bench_gpu.py', *given])}`", ""]
    statuses: dict[str, dict] = {}
    for name in args.only:
        t0 = time.perf_counter()
        try:
            lines = BENCHES[name](plan, args)
            status, reason = "ran", None
        except Skipped as skip:
            status, reason = "skipped", str(skip)
            lines = [f"### {TITLES[name]}", "", f"skipped: {reason}"]
        except Exception as error:  # report it, run the others
            traceback.print_exc()
            status, reason = "failed", f"{type(error).__name__}: {error}"
            lines = [f"### {TITLES[name]}", "", f"FAILED: {reason}"]
        seconds = time.perf_counter() - t0
        statuses[name] = {"status": status, "seconds": round(seconds, 1), "reason": reason}
        log(f"[{name}] {status} in {seconds:.1f} s" + (f": {reason}" if reason else ""))
        out += [*lines, ""]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out.append(f"Total benchmark time: {time.perf_counter() - started:.0f} s")
    print("\n".join(out), flush=True)
    if args.status is not None:
        args.status.write_text(json.dumps(statuses, indent=2) + "\n")
    return 1 if any(s["status"] == "failed" for s in statuses.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
