"""Training-step and mask-update cost of the sparse methods, measured in one process.

Two measurements, printed as markdown tables (progress goes to stderr):

1. Training steps of the CIFAR ResNet-18 and the MLP (batch 128, synthetic tensors, SGD
   momentum 0.9 nesterov wd 5e-4, density 0.1 ERK) for ``dense`` (a plain loop, no method),
   ``floor`` (see ``EnforcementFloor``), ``static``, ``set``, ``rigl`` and ``srigl``.
   A step is forward + cross-entropy + backward + ``before_step()`` + ``optimizer.step()``
   + ``after_step()`` + ``zero_grad()``.
   Non-update steps are timed apart from the mask update; the update is timed as
   ``update_topology(step)`` after a real backward and ``_capture_dense_grads()`` (capture
   timed separately). The amortised step at delta_T is
   ``(method_step * delta_T + capture + update) / delta_T``, compared with the dense step.
2. The mask update of ResNet-50 (ImageNet shapes, density 0.1 ERK) for RigL, SRigL
   (gamma_sal 0.3) and SET, with random dense gradients and no forward pass.

Methods are interleaved across rounds (a balanced order: ``balanced_order``) and medians are
reported, so slow drifts of a noisy machine hit every method alike.

    python scripts/bench_train.py            # full run (about 5 minutes on 2 CPU cores)
    python scripts/bench_train.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import sst
from sst import models
from sst.runs.runlog import git_commit
from sst.sparsity import SET, RigL, SparsityMethod, SRigL, Static

METHODS = ("dense", "floor", "static", "set", "rigl", "srigl")
DYNAMIC = ("set", "rigl", "srigl")
MODELS = ("resnet18_cifar", "mlp", "resnet50")
BATCH = 128
TOTAL_STEPS = 100_000  # sets the drop fraction of the timed updates (~alpha = 0.3)


@dataclass(frozen=True)
class Plan:
    """How much to time: ``rounds`` interleaved rounds of ``steps`` timed steps and
    ``updates`` timed mask updates per method, after ``warmup`` untimed steps."""

    rounds: int
    steps: int
    updates: int
    warmup: int


# Full and --quick plans per model (resnet50: updates only).
PLANS = {
    "resnet18_cifar": (Plan(6, 3, 1, 1), Plan(1, 1, 1, 1)),
    "mlp": (Plan(7, 300, 3, 100), Plan(2, 20, 1, 5)),
    "resnet50": (Plan(5, 0, 1, 0), Plan(1, 0, 1, 0)),
}


# ----------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def iqr(values: list[float]) -> float:
    if len(values) < 4:
        return max(values) - min(values) if values else float("nan")
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def median_se(values: list[float]) -> float:
    """Standard error of the median, from the IQR (normal approximation)."""
    if len(values) < 4:
        return float("nan")
    return 1.2533 * (iqr(values) / 1.349) / len(values) ** 0.5


def diff_se(a: list[float], b: list[float]) -> float:
    return (median_se(a) ** 2 + median_se(b) ** 2) ** 0.5


def pm(value: float) -> str:
    """'± x%' for a noise estimate, or '(n < 4)' when too few samples give none."""
    return "± n/a (n < 4)" if value != value else f"± {value:.1f}%"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sst_commit() -> str:
    """The short commit of the checkout, flagged when sst/ has uncommitted changes."""
    head = git_commit()
    if head is None:
        return "unknown"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "sst"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = "unknown"
    return head[:7] + (" (sst/ modified)" if dirty else "")


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info(device: torch.device) -> list[str]:
    lines = [
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores, {usable_cores()} usable)",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"Python {platform.python_version()}, sst {getattr(sst, '__version__', '?')}",
        f"- device: {device}",
        f"- sst commit: {sst_commit()}",
    ]
    if hasattr(os, "getloadavg"):
        lines.append(f"- load average at start (1/5/15 min): {loadavg()}")
    if device.type == "cuda":
        lines[-1] += f" ({torch.cuda.get_device_name(device)})"
    return lines


class EnforcementFloor:
    """The per-step mask enforcement the core requires and nothing else: one fused
    ``grad *= mask`` before ``optimizer.step()`` and one fused ``weight *= mask`` after it,
    with a Static method's masks and none of a method's bookkeeping. Its overhead is the
    floor under every method that masks gradients and re-masks weights every step."""

    needs_dense_grad = False

    def __init__(self, static: Static) -> None:
        self.weights = list(static.weights.values())
        self.masks = [static.masks[name] for name in static.weights]
        self.data = [weight.detach() for weight in self.weights]

    def before_step(self) -> None:
        torch._foreach_mul_([weight.grad for weight in self.weights], self.masks)

    def after_step(self) -> None:
        torch._foreach_mul_(self.data, self.masks)


def make_method(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    density: float,
    delta_t: int,
    example: torch.Tensor | None,
) -> SparsityMethod | EnforcementFloor | None:
    if name == "dense":
        return None
    common = {"density": density, "distribution": "erk", "seed": 0, "example_input": example}
    if name == "floor":
        return EnforcementFloor(Static(model, optimizer, **common))
    if name == "static":
        return Static(model, optimizer, **common)
    dynamic = {"total_steps": TOTAL_STEPS, "delta_t": delta_t, **common}
    if name == "set":
        return SET(model, optimizer, **dynamic)
    if name == "rigl":
        return RigL(model, optimizer, **dynamic)
    if name == "srigl":
        return SRigL(model, optimizer, gamma_sal=0.3, **dynamic)
    raise ValueError(f"unknown method {name!r}: allowed values are {METHODS}")


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )


@dataclass
class Run:
    """One method on its own copy of the model, plus what was measured."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: SparsityMethod | EnforcementFloor | None
    step_ms: list[float] = field(default_factory=list)
    hooks_ms: list[float] = field(default_factory=list)
    capture_ms: list[float] = field(default_factory=list)
    update_ms: list[float] = field(default_factory=list)
    updates_done: int = 0


def balanced_order(items: list, round_index: int) -> list:
    """The items' order in round ``round_index``: a row of a Williams design, the Latin square
    in which every item directly follows every other one equally often (over n rounds for n
    items, 2n when n is odd). A plain rotation would keep each item's predecessor fixed, and
    the predecessor sets the cache state (a dense layer evicts the sparse one's operands)."""
    n = len(items)
    if n < 2:
        return list(items)
    first = [0]  # 0, 1, n - 1, 2, n - 2, ...
    for j in range(1, n):
        first.append((j + 1) // 2 if j % 2 else n - j // 2)
    period = n if n % 2 == 0 else 2 * n
    row = round_index % period
    order = [items[(k + row) % n] for k in first]
    return order if row < n else order[::-1]


# ----------------------------------------------------------------------------- training steps
def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple:
    """One full training step; returns (step seconds, seconds in the method's hooks)."""
    sync(device)
    start = time.perf_counter()
    loss = F.cross_entropy(run.model(x), y)
    loss.backward()
    sync(device)
    h0 = time.perf_counter()
    if run.method is not None:
        run.method.before_step()
    sync(device)
    h1 = time.perf_counter()
    run.optimizer.step()
    sync(device)
    h2 = time.perf_counter()
    if run.method is not None:
        run.method.after_step()
    sync(device)
    h3 = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    sync(device)
    end = time.perf_counter()
    return end - start, (h1 - h0) + (h3 - h2)


def is_update_step(run: Run) -> bool:
    method = run.method
    return hasattr(method, "is_update_step") and method.is_update_step(method.step + 1)


def timed_steps(run: Run, n: int, x, y, device, record: bool) -> None:
    done = 0
    while done < n:
        # A step that captures the dense gradient and updates the topology is not a
        # "non-update" step: run it (the schedule goes on) but leave it out of the timings.
        update = is_update_step(run)
        step_s, hooks_s = train_step(run, x, y, device)
        if update:
            continue
        done += 1
        if record:
            run.step_ms.append(1000 * step_s)
            run.hooks_ms.append(1000 * hooks_s)


def timed_update(run: Run, device: torch.device, make_grads: Callable[[Run], None]) -> tuple:
    """Capture (if the method needs it) and update once; returns (capture s, update s)."""
    method = run.method
    assert method is not None
    run.updates_done += 1
    step = method.delta_t * run.updates_done
    make_grads(run)
    capture = 0.0
    if method.needs_dense_grad:
        sync(device)
        start = time.perf_counter()
        method._capture_dense_grads()
        sync(device)
        capture = time.perf_counter() - start
    sync(device)
    start = time.perf_counter()
    method.update_topology(step)
    sync(device)
    update = time.perf_counter() - start
    run.optimizer.zero_grad(set_to_none=True)
    return capture, update


def bench_training(name: str, methods: list[str], plan: Plan, args, device) -> list[Run]:
    if name == "resnet18_cifar":
        shape, builder = (3, 32, 32), models.resnet18_cifar
    else:
        shape, builder = (1, 8, 8), models.mlp
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, *shape, generator=gen).to(device)
    y = torch.randint(0, 10, (BATCH,), generator=gen).to(device)

    runs = []
    for method_name in methods:
        torch.manual_seed(0)  # same initial weights for every method
        model = builder(10, shape).to(device)
        optimizer = make_optimizer(model)
        method = make_method(method_name, model, optimizer, args.density, args.delta_t, x[:1])
        runs.append(Run(method_name, model, optimizer, method))

    def real_backward(run: Run) -> None:
        run.optimizer.zero_grad(set_to_none=True)
        if run.method is not None and run.method.needs_dense_grad:
            F.cross_entropy(run.model(x), y).backward()

    dynamic = [r for r in runs if r.name in DYNAMIC]
    log(f"[{name}] warm-up")
    for run in runs:
        timed_steps(run, plan.warmup, x, y, device, record=False)
    for run in dynamic:
        timed_update(run, device, real_backward)

    for r in range(plan.rounds):
        log(f"[{name}] round {r + 1}/{plan.rounds}")
        for run in balanced_order(runs, r):
            timed_steps(run, plan.steps, x, y, device, record=True)
        for run in balanced_order(dynamic, r):
            for _ in range(plan.updates):
                capture, update = timed_update(run, device, real_backward)
                run.capture_ms.append(1000 * capture)
                run.update_ms.append(1000 * update)
    return runs


@dataclass(frozen=True)
class Amortised:
    """A method's cost at delta_T against the dense step (percentages of the dense step)."""

    step_ms: float  # step + (capture + update) / delta_T
    by_step: float  # step_ms / dense step - 1
    by_hooks: float  # (hooks + (capture + update) / delta_T) / dense step
    noise: float  # 2 standard errors of the step-time difference


def amortised(run: Run, dense_steps: list[float], delta_t: int) -> Amortised:
    dense_ms = median(dense_steps)
    capture = median(run.capture_ms) if run.capture_ms else 0.0
    update = median(run.update_ms) if run.update_ms else 0.0
    extra = (capture + update) / delta_t
    step_ms = median(run.step_ms) + extra
    return Amortised(
        step_ms=step_ms,
        by_step=100 * (step_ms / dense_ms - 1),
        by_hooks=100 * (median(run.hooks_ms) + extra) / dense_ms,
        noise=200 * diff_se(dense_steps, run.step_ms) / dense_ms,
    )


def update_met(run: Run, target_s: float) -> bool:
    return median(run.update_ms) / 1000 < target_s


def training_table(name: str, runs: list[Run], plan: Plan, delta_t: int) -> list[str]:
    dense = next((r for r in runs if r.name == "dense"), None)
    dense_steps = dense.step_ms if dense else []
    dense_ms = median(dense_steps)
    lines = [
        f"### {name} (batch {BATCH}; per method {plan.rounds} x {plan.steps} timed steps, "
        f"{plan.rounds} x {plan.updates} timed updates)",
        "",
        "| method | step ms (IQR) | step overhead (± 2 s.e.) | hooks ms | hooks % of dense | "
        f"capture ms | update ms | amortised ms @ΔT={delta_t} | amortised overhead | "
        "amortised overhead (hooks) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        step = median(run.step_ms)
        hooks = median(run.hooks_ms)
        row = [run.name, f"{step:.3f} ({iqr(run.step_ms):.3f})"]
        if run.name == "dense":
            lines.append(
                "| " + " | ".join([*row, "—", "—", "—", "—", "—", f"{step:.3f}", "—", "—"]) + " |"
            )
            continue
        cost = amortised(run, dense_steps, delta_t)
        row += [
            f"{100 * (step / dense_ms - 1):+.1f}% {pm(cost.noise)}",
            f"{hooks:.3f}",
            f"{100 * hooks / dense_ms:.2f}%",
            f"{median(run.capture_ms):.2f}" if run.capture_ms else "—",
            f"{median(run.update_ms):.2f}" if run.update_ms else "—",
            f"{cost.step_ms:.3f}",
            f"{cost.by_step:+.1f}%",
            f"{cost.by_hooks:+.2f}%",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


# ----------------------------------------------------------------------------- ResNet-50 update
def bench_resnet50(methods: list[str], plan: Plan, args, device) -> list[Run]:
    runs = []
    for method_name in methods:
        log(f"[resnet50] building {method_name}")
        torch.manual_seed(0)
        model = models.resnet50(1000, (3, 224, 224)).to(device)
        optimizer = make_optimizer(model)
        method = make_method(method_name, model, optimizer, args.density, args.delta_t, None)
        runs.append(Run(method_name, model, optimizer, method))

    # Shared random "dense gradients", drawn once per round (untimed); all copies of the
    # model have the same shapes.
    grads: dict[str, torch.Tensor] = {}

    def draw_grads() -> None:
        weights = runs[0].method.weights
        for layer, weight in weights.items():
            grads[layer] = torch.randn_like(weight)

    def fake_grads(run: Run) -> None:
        for layer, weight in run.method.weights.items():
            weight.grad = grads[layer]

    # One optimizer step so that momentum buffers exist and are masked like in training.
    draw_grads()
    for run in runs:
        fake_grads(run)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.method.apply_masks()

    log("[resnet50] warm-up")
    for run in runs:
        timed_update(run, device, fake_grads)
    for r in range(plan.rounds):
        log(f"[resnet50] round {r + 1}/{plan.rounds}")
        draw_grads()
        for run in balanced_order(runs, r):
            for _ in range(plan.updates):
                capture, update = timed_update(run, device, fake_grads)
                run.capture_ms.append(1000 * capture)
                run.update_ms.append(1000 * update)
    return runs


def resnet50_table(runs: list[Run], plan: Plan, target_s: float) -> list[str]:
    params = sum(w.numel() for w in runs[0].method.weights.values()) if runs else 0
    lines = [
        f"### resnet50 mask update (ImageNet shapes, {params / 1e6:.1f}M masked weights, "
        f"{plan.rounds} x {plan.updates} timed updates per method)",
        "",
        f"| method | capture ms | update ms (IQR) | min ms | max ms | target < {target_s:g} s |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        update = median(run.update_ms)
        capture = f"{median(run.capture_ms):.1f}" if run.method.needs_dense_grad else "—"
        met = "met" if update_met(run, target_s) else "MISSED"
        lines.append(
            f"| {run.name} | {capture} | {update:.1f} ({iqr(run.update_ms):.1f}) | "
            f"{min(run.update_ms):.1f} | {max(run.update_ms):.1f} | {met} |"
        )
    return lines


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke test")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: all usable cores)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument(
        "--delta-t", type=int, default=100, help="steps between updates, for amortising"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="override the rounds of every model's plan"
    )
    parser.add_argument(
        "--target-pct",
        type=float,
        default=5.0,
        help="target: amortised overhead of RigL/SRigL below this %% of a dense step",
    )
    parser.add_argument(
        "--target-update-s",
        type=float,
        default=1.0,
        help="target: ResNet-50 mask update below this many seconds",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or usable_cores())

    started = time.perf_counter()
    out = ["## Machine", "", *machine_info(device), ""]
    given = sys.argv[1:] if argv is None else argv
    out.append(f"Command: `python scripts/bench_train.py {' '.join(given)}`".replace(" `", "`"))
    out.append("")
    verdicts = []
    for name in args.models:
        plan = PLANS[name][1 if args.quick else 0]
        if args.rounds is not None:
            plan = Plan(args.rounds, plan.steps, plan.updates, plan.warmup)
        if name == "resnet50":
            methods = [m for m in args.methods if m in DYNAMIC]
            if not methods:
                continue
            runs = bench_resnet50(methods, plan, args, device)
            out += [*resnet50_table(runs, plan, args.target_update_s), ""]
            for run in runs:
                ok = update_met(run, args.target_update_s)
                verdicts.append(
                    f"- resnet50 {run.name} update {median(run.update_ms):.0f} ms: "
                    f"{'met' if ok else 'MISSED'} (< {args.target_update_s:g} s)"
                )
            del runs
            continue
        runs = bench_training(name, list(args.methods), plan, args, device)
        out += [*training_table(name, runs, plan, args.delta_t), ""]
        dense = next((r for r in runs if r.name == "dense"), None)
        for run in runs:
            if run.name not in ("rigl", "srigl") or dense is None:
                continue
            cost = amortised(run, dense.step_ms, args.delta_t)
            # The verdict uses the direct measurement (hooks + update); the step-time
            # difference is the cross-check, with its noise (2 standard errors).
            ok = cost.by_hooks < args.target_pct
            verdicts.append(
                f"- {name} {run.name} amortised overhead @ΔT={args.delta_t}: "
                f"{cost.by_hooks:+.2f}% (hooks + update): {'met' if ok else 'MISSED'} "
                f"(< {args.target_pct:g}%); step-time cross-check {cost.by_step:+.1f}% "
                f"{pm(cost.noise)}"
            )
        del runs
    if verdicts:
        out += ["### Targets", "", *verdicts, ""]
    out.append(f"Total benchmark time: {time.perf_counter() - started:.0f} s")
    if hasattr(os, "getloadavg"):
        out.append(f"Load average at end (1/5/15 min): {loadavg()}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
