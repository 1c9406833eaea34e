"""Where a run trains: its device, its share of the global batch, its model placement, and
what a multi-process launch needs of the trainer settings."""

from __future__ import annotations

import torch
from torch import nn

from sst import dist
from sst.config.keys import ConfigError
from sst.engine.settings import TrainerSettings

DEVICES = ("auto", "cpu", "cuda", "mps")


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def pick_device(name: str, launch: dist.Environment | None = None) -> torch.device:
    """The device of ``trainer.device``; in a multi-process launch each rank takes the CUDA
    device of its local rank (``cuda:<local_rank>``, modulo the visible devices)."""
    launch = launch or dist.Environment()
    if name not in DEVICES:
        raise ConfigError(f"trainer.device={name!r} is unknown: allowed values are {DEVICES}")
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available() and not launch.distributed:
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible")
    if name == "mps" and launch.distributed:
        raise ConfigError(
            f"trainer.device=mps cannot run {launch.world_size} processes (DDP): use cuda or cpu"
        )
    if name == "cuda" and launch.distributed:
        return torch.device("cuda", launch.local_rank % torch.cuda.device_count())
    return torch.device(name)


def per_rank_batch(batch_size: int, grad_accumulation: int, world_size: int) -> int:
    """Samples per rank and micro-batch: ``trainer.batch_size`` is the global batch of an
    optimizer step, split over ``world_size`` ranks and ``grad_accumulation`` micro-batches,
    which must divide it."""
    parts = grad_accumulation * world_size
    if batch_size < 1 or batch_size % parts:
        raise ConfigError(
            f"trainer.batch_size={batch_size} (the global batch of an optimizer step) must be "
            f"a positive multiple of trainer.grad_accumulation={grad_accumulation} x "
            f"{world_size} processes (the world size) = {parts}"
        )
    return batch_size // parts


def prepare_model(
    model: nn.Module, device: torch.device, settings: TrainerSettings, launch: dist.Environment
) -> nn.Module:
    """The model on its device; with ``trainer.sync_batchnorm`` in a multi-process run its
    BatchNorm layers become SyncBatchNorm (statistics over the global batch)."""
    model = place_model(model, device, settings.channels_last)
    if settings.sync_batchnorm and launch.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def check_launch(settings: TrainerSettings, launch: dist.Environment) -> None:
    """What a multi-process launch needs of the trainer settings, checked before the
    process group starts (a refused rank must not leave the others waiting for it)."""
    per_rank_batch(settings.batch_size, settings.grad_accumulation, launch.world_size)
    if settings.sync_batchnorm and launch.distributed:
        device = pick_device(settings.device, launch)
        if device.type != "cuda":
            raise ConfigError(
                "trainer.sync_batchnorm=true needs CUDA devices: PyTorch's SyncBatchNorm does "
                f"not run on {device.type}; set trainer.sync_batchnorm=false"
            )
