"""Distributed helpers that also work, as no-ops, in a single process."""

from __future__ import annotations

import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """Rank 0 alone writes files, logs and shows progress bars."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()
