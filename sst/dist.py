"""Multi-process (DDP) training: which rank this process is, the process group, and the few
collectives sst issues besides DDP's own gradient all-reduce. Every helper works, as a no-op,
in a single process.

Launchers (``environment`` reads them, in this order):

- ``torchrun`` (one node, or several with ``--nnodes`` and a rendezvous) and anything else
  that sets the ``env://`` variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``.
- submitit (the Hydra submitit launcher, ``launcher=submitit_slurm`` or ``submitit_local``
  with ``hydra.launcher.tasks_per_node`` > 1): the task's rank comes from submitit's job
  environment (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, or submitit's local
  equivalents) and ``submitit.helpers.TorchDistributedEnvironment`` exports ``MASTER_ADDR``
  (the job's first node) and ``MASTER_PORT`` (derived from the job id) before the process
  group starts.

Anything else is a single process (a SLURM allocation alone is not: inside an ``sbatch``
script, run ``torchrun`` or submitit).

Collectives that sst adds to DDP's:

- per optimizer step: the stop vote (``StopVote``), one asynchronous 4-byte all-reduce on a
  CPU (gloo) group, waited one step later, so it never stalls the step;
- per mask update: the mask checksum (``masks_agree``), one all-reduce of three int64 per
  masked layer on the same CPU group;
- per train record: the mean train loss and the NaN/inf flag; per evaluation: the test sums
  and counts, and rank 0's normalisation buffers (``broadcast_buffers``).

Mask enforcement and the dense-gradient capture issue none: DDP's backward already leaves
the same averaged gradient, at every position, on every rank. Training in condensed form
runs under ``Replicated`` instead of DDP (its parameters change at mask updates): one flat
gradient all-reduce per step, after the backward pass.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

LAUNCHERS = ("single", "torchrun", "submitit")


@dataclass(frozen=True)
class Environment:
    """This process's place in the launch."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launcher: str = "single"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def environment(env: Mapping[str, str] | None = None) -> Environment:
    """The launch this process belongs to, read from ``env`` (default ``os.environ``); see
    the module docstring for the launchers."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return Environment(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=int(env["WORLD_SIZE"]),
            launcher="torchrun",
        )
    executor = env.get("SUBMITIT_EXECUTOR", "")
    if executor == "local" and "SUBMITIT_LOCAL_NTASKS" in env:
        return Environment(
            rank=int(env.get("SUBMITIT_LOCAL_GLOBALID", "0")),
            local_rank=int(env.get("SUBMITIT_LOCAL_LOCALID", "0")),
            world_size=int(env["SUBMITIT_LOCAL_NTASKS"]),
            launcher="submitit",
        )
    if executor == "slurm" and "SLURM_NTASKS" in env:
        return Environment(
            rank=int(env.get("SLURM_PROCID", "0")),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            world_size=int(env["SLURM_NTASKS"]),
            launcher="submitit",
        )
    return Environment()


# ----------------------------------------------------------------- the process group
_control: dist.ProcessGroup | None = None  # a gloo group for sst's own CPU collectives


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: from the process group once it runs, else from the launch
    environment (so a rank check works before ``setup``)."""
    return dist.get_rank() if is_initialized() else environment().rank


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0 alone writes files, logs and shows progress bars."""
    return rank() == 0


def setup(launch: Environment, device: torch.device) -> None:
    """Starts the process group of a multi-process launch (nccl on CUDA, gloo otherwise),
    unless one already runs; a single process is left alone. The group is destroyed when
    the interpreter exits."""
    global _control
    if not launch.distributed or is_initialized():
        if is_initialized() and _control is None:
            _control = dist.new_group(backend="gloo")
        return
    if launch.launcher == "submitit":
        from submitit.helpers import TorchDistributedEnvironment

        # MASTER_ADDR/PORT, RANK, WORLD_SIZE for env://; the device is chosen by sst
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method="env://")
    _control = dist.new_group(backend="gloo")
    atexit.register(teardown)


def teardown() -> None:
    """Destroys the process group (and sst's CPU group)."""
    global _control
    if is_initialized():
        dist.destroy_process_group()
    _control = None


def control_group() -> dist.ProcessGroup | None:
    """The CPU (gloo) group of sst's own small collectives: they never queue behind, or
    synchronise with, the device's work."""
    global _control
    if _control is None and is_initialized():
        _control = dist.new_group(backend="gloo")
    return _control


# ----------------------------------------------------------------- the model
def wrap(model: nn.Module, device: torch.device, changing_params: bool = False) -> nn.Module:
    """In a multi-process run ``DistributedDataParallel(model)``, or ``Replicated(model)``
    when the model's parameters change while it trains (``changing_params``: training in
    condensed form); else ``model``. Both broadcast rank 0's parameters and buffers once
    here, then the buffers before every step's first forward."""
    if not is_initialized():
        return model
    if changing_params:
        return Replicated(model)
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


class Replicated(nn.Module):
    """Data parallel without DDP's reducer, for a model whose parameters change while it
    trains: training in condensed form (``trainer.sparse_compute``) swaps a layer's weight
    for a parameter of its kept values between mask updates, while DDP's reducer registers
    the parameters once, when it wraps the model.

    It computes what DDP computes: rank 0's parameters and buffers on every rank at the
    start, rank 0's buffers before the first forward of every step (DDP's
    ``broadcast_buffers``; not before the other micro-batches of an accumulated step), and
    every gradient averaged over the ranks once per optimizer step (``average_gradients``,
    called after the last micro-batch's backward). DDP overlaps its bucketed all-reduces
    with the backward pass; this issues one flat all-reduce per dtype after it.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self._sync_buffers = True
        self._accumulating = False
        with torch.no_grad():
            for param in module.parameters():
                dist.broadcast(param, src=0)
        broadcast_buffers(module)

    def forward(self, *args, **kwargs):
        if self._sync_buffers:
            broadcast_buffers(self.module)
        self._sync_buffers = torch.is_grad_enabled() and not self._accumulating
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """A micro-batch before the last of an accumulated step (as DDP's ``no_sync``)."""
        self._accumulating = True
        try:
            yield
        finally:
            self._accumulating = False

    @torch.no_grad()
    def average_gradients(self) -> None:
        """Every parameter's gradient becomes its mean over the ranks (each rank's gradient
        divided by the world size, then summed, as DDP's default all-reduce)."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for grad in grads:
            by_dtype.setdefault((grad.dtype, grad.device), []).append(grad)
        for group in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in group]).div_(world_size())
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for grad, part in zip(group, flat.split([g.numel() for g in group]), strict=True):
                grad.copy_(part.view_as(grad))


def average_gradients(model: nn.Module) -> None:
    """After the last micro-batch's backward of a step: ``Replicated``'s gradient average
    (DDP has averaged them during the backward pass; a single process has nothing to do)."""
    if isinstance(model, Replicated):
        model.average_gradients()


def no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """DDP's (or ``Replicated``'s) ``no_sync()`` when ``skip`` (a micro-batch before the
    last of an accumulated step: gradients add up locally, the last micro-batch's backward
    all-reduces the sum), else nothing."""
    if skip and isinstance(model, (nn.parallel.DistributedDataParallel, Replicated)):
        return model.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. Between DDP's
    broadcasts at each forward every rank updates them from its own shard; evaluating after
    this makes every rank evaluate the model that rank 0 checkpoints."""
    if not is_initialized():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


# ----------------------------------------------------------------- reductions
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks, in place (a single process: unchanged)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=control_group())
    return box[0]


def any_rank(flag: torch.Tensor | bool) -> bool:
    """Whether ``flag`` is true on any rank."""
    if not is_initialized():
        return bool(flag)
    value = torch.tensor([int(bool(flag))], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=control_group())
    return bool(value.item())


def differing(values: torch.Tensor) -> torch.Tensor:
    """Boolean, per entry of the integer ``values`` (CPU): where the ranks disagree. One
    all-reduce: the maximum of ``[v, -v]`` gives both max(v) and -min(v)."""
    if not is_initialized():
        return torch.zeros(values.shape, dtype=torch.bool)
    flat = values.reshape(-1).to(torch.int64)
    both = torch.cat([flat, -flat])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=control_group())
    high, low = both[: flat.numel()], -both[flat.numel() :]
    return (high != low).reshape(values.shape)


def check_same(name: str, value: int) -> None:
    """Raises unless every rank holds the same integer ``value``."""
    if bool(differing(torch.tensor([value])).any()):
        raise RuntimeError(
            f"the ranks disagree on {name} (this rank: {value}): do all ranks see the same "
            "run folder?"
        )


class StopVote:
    """All ranks agree to stop at the same step.

    A stop signal (SIGTERM from the cluster, SIGUSR1/SIGUSR2 from SLURM or submitit) reaches
    the ranks at different moments, mid-step. After every step each rank calls ``poll`` with
    the signal it saw (0: none); the votes are all-reduced (max) asynchronously on the CPU
    group and read at the next call, so every rank gets the same answer at the same step,
    one step after the first rank saw the signal, and no step waits for the vote. In a
    single process the answer is the local signal, at once.
    """

    def __init__(self) -> None:
        self._pending: dist.Work | None = None
        self._votes = torch.zeros(1, dtype=torch.int32)

    def poll(self, signum: int | None) -> int | None:
        """The agreed stop signal (None: go on)."""
        if not is_initialized():
            return signum
        agreed = self.close()
        self._votes = torch.tensor([signum or 0], dtype=torch.int32)
        self._pending = dist.all_reduce(
            self._votes, op=dist.ReduceOp.MAX, group=control_group(), async_op=True
        )
        return agreed

    def close(self) -> int | None:
        """Waits for the vote in flight and returns its result."""
        if self._pending is None:
            return None
        self._pending.wait()
        self._pending = None
        return int(self._votes.item()) or None


# ----------------------------------------------------------------- quiet ranks
def quiet_logging() -> None:
    """On ranks other than 0, drops the root logger's file handlers (``train.log`` is rank
    0's), so those ranks write no file; the console still shows their warnings."""
    if is_main():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (a download, a cache), then the other ranks."""
    if not is_main():
        barrier()
    try:
        yield
    finally:  # rank 0's block failed: the others run theirs and fail too, never wait forever
        if is_main():
            barrier()


def barrier() -> None:
    if is_initialized():
        dist.barrier()
