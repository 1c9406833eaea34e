"""Cost of multi-process (DDP) training on the CPU: 1 against 2 gloo processes.

For the digits MLP (8x8 images -> 256 -> 256 -> 10) and a small CNN (3x3 convs of 16 and
32 channels and a linear layer on 3x32x32 inputs), at a global batch of 128 (64 per rank
with 2 processes), one intra-op thread per process (torchrun's default):

1. the time of one training step (forward, cross-entropy, backward with DDP's gradient
   all-reduce, SGD step) for ``dense`` (no sparsity method), ``rigl`` (RigL at density 0.1
   ERK between mask updates: gradient masking and weight re-masking) and ``rigl+vote``
   (the same plus the loop's per-step stop vote, ``sst.dist.StopVote``);
2. the stop vote alone: ``StopVote.poll`` called back to back (each waits for the previous
   asynchronous all-reduce, so this is its full round trip, an upper bound of its cost in a
   step, where the all-reduce overlaps the step's compute);
3. the RigL mask update (``update_topology``, which includes the mask checksum and its
   all-reduce) and, apart, the checksum (``MaskSet.checksum``) and its all-reduce
   (``sst.dist.differing``); for scale, the checksum of ResNet-50's masks.

Step times are the median over rounds ± half the interquartile range. Variants are
interleaved across rounds and medians reported, so a noisy machine's drifts hit
every variant alike. The ranks are forked processes; the numbers are rank 0's.

    python scripts/bench_ddp.py            # full run (a few minutes on 2 CPU cores)
    python scripts/bench_ddp.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import queue
import socket
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from bench_train import balanced_order
from torch import nn

from sst import dist, models
from sst.runs.runlog import git_commit
from sst.sparsity import RigL

GLOBAL_BATCH = 128
VARIANTS = ("dense", "rigl", "rigl+vote")
NEVER = 10**9  # delta_t of the timed steps: no mask update among them


@dataclass(frozen=True)
class Plan:
    rounds: int
    steps: int
    updates: int
    warmup: int
    polls: int = 200  # stop-vote polls per round, apart from any step


# (full, --quick) per model
PLANS = {
    "mlp": (Plan(rounds=15, steps=100, updates=7, warmup=20), Plan(2, 5, 1, 2, 10)),
    "cnn": (Plan(rounds=9, steps=10, updates=5, warmup=3), Plan(1, 2, 1, 1, 10)),
}


def make_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "mlp":
        shape = (1, 8, 8)  # the digits images
        return models.mlp(num_classes=10, input_shape=shape, hidden=[256, 256]), shape
    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )
    return cnn, (3, 32, 32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values)


def spread_ms(values: list[float]) -> float:
    """Half the interquartile range (the range with fewer than 4 values), in ms."""
    if len(values) < 4:
        return 500.0 * (max(values) - min(values))
    q = statistics.quantiles(values, n=4)
    return 500.0 * (q[2] - q[0])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- one rank
def rank_main(rank: int, world: int, port: int, model_name: str, plan: Plan, out) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    cpu = torch.device("cpu")
    dist.setup(dist.Environment(rank, rank, world, "torchrun"), cpu)
    try:
        result = measure(rank, world, model_name, plan, cpu)
        if rank == 0:
            out.put(result)
    finally:
        dist.teardown()


def measure(rank: int, world: int, model_name: str, plan: Plan, cpu: torch.device) -> dict:
    per_rank = GLOBAL_BATCH // world
    setups = {}
    for variant in VARIANTS:
        model, shape = make_model(model_name)
        trained = dist.wrap(model, cpu)
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9)
        method = None
        if variant != "dense":
            method = RigL(model, optimizer, density=0.1, total_steps=NEVER, delta_t=NEVER)
        vote = dist.StopVote() if variant == "rigl+vote" else None
        setups[variant] = (trained, optimizer, method, vote)
    gen = torch.Generator().manual_seed(rank)
    inputs = torch.randn(per_rank, *shape, generator=gen)
    targets = torch.randint(0, 10, (per_rank,), generator=gen)

    def step(variant: str) -> None:
        trained, optimizer, method, vote = setups[variant]
        loss = F.cross_entropy(trained(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if method is not None:
            method.before_step()
        optimizer.step()
        if method is not None:
            method.after_step()
        if vote is not None:
            vote.poll(None)

    for variant in VARIANTS:
        for _ in range(plan.warmup):
            step(variant)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(plan.rounds):
        for variant in balanced_order(VARIANTS, r):
            dist.barrier()
            start = time.perf_counter()
            for _ in range(plan.steps):
                step(variant)
            times[variant].append((time.perf_counter() - start) / plan.steps)
    setups["rigl+vote"][3].close()

    vote, polls = dist.StopVote(), []
    for _ in range(plan.rounds):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(plan.polls):
            vote.poll(None)
        polls.append((time.perf_counter() - start) / plan.polls)
    vote.close()

    trained, optimizer, method, _ = setups["rigl"]
    updates, local, reduce = [], [], []
    for i in range(plan.updates):
        loss = F.cross_entropy(trained(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method._capture_dense_grads()
        dist.barrier()
        start = time.perf_counter()
        method.update_topology(1000 + i)
        updates.append(time.perf_counter() - start)
        dist.barrier()
        start = time.perf_counter()
        checksum = method.mask_set.checksum()
        local.append(time.perf_counter() - start)
        start = time.perf_counter()
        dist.differing(checksum)
        reduce.append(time.perf_counter() - start)
    return {
        "step_ms": {v: median_ms(t) for v, t in times.items()},
        "step_spread_ms": {v: spread_ms(t) for v, t in times.items()},
        "vote_us": 1000.0 * median_ms(polls),
        "update_ms": median_ms(updates),
        "checksum_ms": median_ms(local),
        "checksum_allreduce_ms": median_ms(reduce),
        "layers": len(method.masks),
    }


def run_world(world: int, model_name: str, plan: Plan) -> dict:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=rank_main, args=(r, world, port, model_name, plan, out))
        for r in range(world)
    ]
    for proc in procs:
        proc.start()
    while True:
        with contextlib.suppress(queue.Empty):
            result = out.get(timeout=1.0)
            break
        if any(proc.exitcode for proc in procs):
            for proc in procs:
                proc.kill()
            raise RuntimeError("a rank failed (its traceback is above)")
    for proc in procs:
        proc.join()
    return result


def resnet50_checksum_ms(repeats: int) -> float:
    torch.manual_seed(0)
    model = models.resnet50(num_classes=1000, input_shape=(3, 224, 224))
    method = RigL(model, None, density=0.1, total_steps=NEVER)
    method.mask_set.neuron_counts()  # the counts are cached: an update computes them anyway
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        method.mask_set.checksum()
        times.append(time.perf_counter() - start)
    return median_ms(times)


def machine() -> list[str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            )
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    commit = (git_commit() or "unknown")[:7]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"- CPU: {cpu} ({os.cpu_count()} logical cores); no GPU",
        f"- torch {torch.__version__} (gloo), Python {platform.python_version()}, "
        f"sst commit {commit}",
        f"- load average at start (1/5/15 min): {load}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    args = parser.parse_args()
    lines = machine()
    steps = [
        "",
        "| model | processes | batch per rank | variant | step (ms, median ± IQR/2) | samples/s |",
    ]
    steps.append("|---|---|---|---|---|---|")
    votes = ["", "| model | processes | stop-vote poll alone (µs) |", "|---|---|---|"]
    updates = ["", "| model | processes | masked layers | mask update (ms) | checksum (ms) | "]
    updates[-1] += "checksum all-reduce (ms) |"
    updates.append("|---|---|---|---|---|---|")
    for model_name, plans in PLANS.items():
        plan = plans[1] if args.quick else plans[0]
        for world in (1, 2):
            log(f"{model_name}, {world} process(es) ...")
            result = run_world(world, model_name, plan)
            for variant, ms in result["step_ms"].items():
                rate = GLOBAL_BATCH / ms * 1000
                spread = result["step_spread_ms"][variant]
                steps.append(
                    f"| {model_name} | {world} | {GLOBAL_BATCH // world} | {variant} | "
                    f"{ms:.2f} ± {spread:.2f} | {rate:.0f} |"
                )
            votes.append(f"| {model_name} | {world} | {result['vote_us']:.1f} |")
            reduce = f"{result['checksum_allreduce_ms']:.3f}" if world > 1 else "-"
            updates.append(
                f"| {model_name} | {world} | {result['layers']} | {result['update_ms']:.2f} | "
                f"{result['checksum_ms']:.3f} | {reduce} |"
            )
    log("resnet50 checksum ...")
    r50 = resnet50_checksum_ms(1 if args.quick else 5)
    r50_line = f"ResNet-50 mask checksum (53 layers, 25.5M weights): {r50:.1f} ms"
    print("\n".join([*lines, *steps, *votes, *updates, "", r50_line]))


if __name__ == "__main__":
    main()
