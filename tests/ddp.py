"""Multi-process (DDP) test harness: run a function on N gloo ranks of this machine, and the
functions the DDP tests run on every rank (module level, so spawned processes find them).

Each rank writes what it saw to ``<report>/<name>-rank<r>.pt``; the test reads and compares.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

WORLD = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(fn: Callable[..., None], *args: Any, world_size: int = WORLD) -> None:
    """Runs ``fn(rank, *args)`` on ``world_size`` processes that see a torchrun-like
    environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...); re-raises a rank's error.

    The ranks are forked, as DataLoader workers are, so they start at once with everything
    the test process imported (spawned ones re-import torch: 10-20 s on a busy machine)."""
    port = free_port()
    mp.start_processes(
        _entry, args=(world_size, port, fn, args), nprocs=world_size, start_method="fork"
    )


def _entry(rank: int, world_size: int, port: int, fn, args) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WANDB_SILENT="true",
        HYDRA_FULL_ERROR="1",
    )
    torch.set_num_threads(1)
    from sst import dist

    try:
        fn(rank, *args)
    finally:
        dist.teardown()


def report(directory: Path, name: str, rank: int, value: Any) -> None:
    torch.save(value, Path(directory) / f"{name}-rank{rank}.pt")


def reports(directory: Path, name: str, world_size: int = WORLD) -> list[Any]:
    return [
        torch.load(Path(directory) / f"{name}-rank{r}.pt", weights_only=False)
        for r in range(world_size)
    ]


def method_state(method) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "masks": {n: m.bool().cpu() for n, m in method.masks.items()},
        "weights": {n: w.detach().cpu().clone() for n, w in method.weights.items()},
    }


# ----------------------------------------------------------------- whole runs on every rank
def sst_train(rank: int, args: list[str]) -> None:
    """``sst-train <args>`` on this rank, as torchrun would start it."""
    import sys

    from sst import train

    sys.argv = ["sst-train", *args]
    train.main()


def train_runs(rank: int, runs: dict[str, list[str]], output_dir: Path, out: Path) -> None:
    """Trains each named run (overrides) under DDP; reports the final masks and weights."""
    from runs import compose_run

    from sst.launch.build import build

    for name, overrides in runs.items():
        cfg, run_dir, choices = compose_run(overrides, Path(output_dir) / name)
        loop = build(cfg, run_dir, choices)
        summary = loop.fit()
        loop.run_log.write_summary(summary)
        loop.run_log.finish()
        buffers = {n: b.clone() for n, b in loop.module.named_buffers()}
        state = method_state(loop.hooks[-1].method)
        report(out, name, rank, {**state, "summary": summary, "buffers": buffers})


def condensed_auto(rank: int, overrides: list[str], output_dir: Path, out: Path) -> None:
    """Trains with ``trainer.sparse_compute=auto`` where the ranks' timings disagree (rank
    0 measures every layer faster condensed, rank 1 slower); reports the layers each rank
    chose, the model's wrapper, and how many condensed values had gradients averaged."""
    from runs import compose_run

    from sst import dist
    from sst.condensed.training import SparseCompute
    from sst.launch.build import build

    SparseCompute._time_layer = lambda self, name: (1.0, 0.5) if rank == 0 else (0.5, 1.0)
    average = dist.Replicated.average_gradients
    condensed_grads = []

    def counting(self) -> None:
        names = [n for n, p in self.module.named_parameters() if p.grad is not None]
        condensed_grads.append(sum(n.endswith("condensed_values") for n in names))
        average(self)

    dist.Replicated.average_gradients = counting
    try:
        cfg, run_dir, choices = compose_run(overrides, Path(output_dir))
        loop = build(cfg, run_dir, choices)
        loop.fit()
        loop.run_log.finish()
    finally:
        dist.Replicated.average_gradients = average
    form = loop.hooks[0].form
    state = method_state(loop.hooks[-1].method)
    wrapper = type(loop.model).__name__
    seen = {"chosen": form.chosen, "wrapper": wrapper, "condensed_grads": condensed_grads}
    report(out, "auto", rank, {**state, **seen})


def replicated_and_ddp(rank: int, overrides: list[str], output_dir: Path, out: Path) -> None:
    """Trains the run under DDP (folder ``ddp``), then under ``sst.dist.Replicated``
    (``replicated``: what training in condensed form runs under), both masked-dense."""
    from sst import dist

    train_runs(rank, {"ddp": overrides}, output_dir, out)
    wrap = dist.wrap
    dist.wrap = lambda model, device, changing_params=False: wrap(model, device, True)
    try:
        train_runs(rank, {"replicated": overrides}, output_dir, out)
    finally:
        dist.wrap = wrap


def interrupt_and_resume(
    rank: int, overrides: list[str], output_dir: Path, signal_step: int, out: Path
) -> None:
    """Trains the run uninterrupted (folder ``whole``), then again (``resumed``) with a
    SIGTERM reaching rank 1 alone during step ``signal_step``, and relaunches it."""
    from runs import compose_run

    from sst.engine.signals import Preempted
    from sst.engine.step import TrainStep
    from sst.launch.run import run

    cfg, run_dir, choices = compose_run(overrides, Path(output_dir) / "whole")
    run(cfg, run_dir, choices)

    train_step = TrainStep.__call__
    taken = 0  # steps of the first launch, which starts at step 0

    def signalled_step(step, micro_batches):
        nonlocal taken
        train_step(step, micro_batches)
        taken += 1
        if rank == 1 and taken == signal_step:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg, run_dir, choices = compose_run(overrides, Path(output_dir) / "resumed")
    TrainStep.__call__ = signalled_step
    stopped = None
    try:
        run(cfg, run_dir, choices)
    except Preempted:
        stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"]
    finally:
        TrainStep.__call__ = train_step
    run(cfg, run_dir, choices)  # the relaunch resumes from the checkpoint
    report(out, "resume", rank, {"stopped_at": stopped})


# ----------------------------------------------------------------- the engine on every rank
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)]
    return nn.Sequential(*layers)


def _global_batch(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(size, 20, generator=gen), torch.randint(0, 5, (size,), generator=gen)


def _setup() -> None:
    from sst import dist

    dist.setup(dist.environment(), torch.device("cpu"))


class CollectiveCounter:
    """Counts the Python-level collectives (``torch.distributed.*``) issued while active;
    DDP's own gradient all-reduce runs in its C++ reducer and is not counted."""

    NAMES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "barrier")

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> CollectiveCounter:
        import torch.distributed as tdist

        for name in self.NAMES:
            original = getattr(tdist, name)
            self._saved[name] = original

            def counted(*args, _original=original, **kwargs):
                self.count += 1
                return _original(*args, **kwargs)

            setattr(tdist, name, counted)
        return self

    def __exit__(self, *exc) -> None:
        import torch.distributed as tdist

        for name, original in self._saved.items():
            setattr(tdist, name, original)


def dense_gradient(rank: int, method_name: str, out: Path) -> None:
    """One RigL/SRigL step under DDP with 2 accumulated micro-batches per rank (the first
    under no_sync): reports the dense gradient the method captured, the full-batch gradient
    of one process, and the collectives issued by the method's per-step calls."""
    from sst import dist, sparsity

    _setup()
    model = _mlp()
    kwargs = {"gamma_sal": 0.0} if method_name == "SRigL" else {}
    trained = dist.wrap(model, torch.device("cpu"))
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)
    method = getattr(sparsity, method_name)(
        model, optimizer, density=0.3, total_steps=100, delta_t=1, t_end=1.0, **kwargs
    )
    reference = copy.deepcopy(model)
    inputs, targets = _global_batch()
    F.cross_entropy(reference(inputs), targets).backward()

    mine = torch.arange(len(inputs)).tensor_split(WORLD)[rank]
    micro_batches = mine.tensor_split(2)
    for i, idx in enumerate(micro_batches):
        with dist.no_sync(trained, skip=i < len(micro_batches) - 1):
            (F.cross_entropy(trained(inputs[idx]), targets[idx]) / len(micro_batches)).backward()
    with CollectiveCounter() as per_step:
        method.before_step()
    captured = {n: g.clone() for n, g in method.dense_grads.items()}
    inactive = {n: m == 0 for n, m in method.masks.items()}
    optimizer.step()
    with CollectiveCounter() as update:
        method.after_step()  # step 1 is an update step (delta_t=1)

    # steps without an update: enforcement only
    method.delta_t = 1000
    for _ in range(3):
        loss = F.cross_entropy(trained(inputs[mine]), targets[mine])
        optimizer.zero_grad()
        loss.backward()
        with per_step:
            method.before_step()
        optimizer.step()
        with per_step:
            method.after_step()
    report(
        out,
        f"grad-{method_name}",
        rank,
        {
            "captured": captured,
            "inactive": inactive,
            "reference": {n: reference.get_submodule(n).weight.grad for n in captured},
            "per_step_collectives": per_step.count,
            "update_collectives": update.count,
            **method_state(method),
        },
    )


def diverge(rank: int, out: Path) -> None:
    """Masks that differ on rank 1: what the consistency check says on each rank."""
    from sst import dist
    from sst.sparsity import RigL
    from sst.sparsity.masks import MaskDivergence

    _setup()
    model = _mlp()
    method = RigL(model, None, density=0.3, total_steps=100)
    mask_set = method.mask_set
    mask_set.verify_ranks()  # the same seed: the same masks
    errors = []
    name = "2"
    new = {n: m.bool().clone() for n, m in mask_set.masks.items()}
    if rank == 1:  # move one active weight of layer "2" to an inactive position
        flat = new[name].view(-1)
        flat[flat.nonzero()[0]] = False
        flat[(~flat).nonzero()[-1]] = True
    try:
        mask_set.set(new)
    except MaskDivergence as error:
        errors.append(str(error))
    mask_set.check_ranks = False
    mask_set.set(new)  # unchecked: no error
    try:
        mask_set.verify_ranks()
    except MaskDivergence as error:
        errors.append(str(error))
    dist.barrier()
    report(out, "diverge", rank, {"errors": errors})
