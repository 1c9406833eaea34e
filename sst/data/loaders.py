"""Deterministic, resumable epoch loaders.

The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees
the same batches, and ``set_epoch(e, skip_batches=n)`` starts the epoch at batch
``n`` without loading the batches before it.

Multi-process (DDP) runs shard every batch: with ``world_size`` W, ``batch_size`` is the
global batch and rank r loads the r-th of W near-equal contiguous slices of it
(``tensor_split``), so the W ranks together see exactly the batch that one process would,
whatever W is (a run may resume on another number of processes), without padding: a last
batch smaller than W leaves some ranks without a slice for it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, get_worker_info

_EPOCH_MIX = 100_003
_BATCH_MIX = 1_000_003
_RANK_MIX = 1_000_000_007
_SEED_MASK = (1 << 63) - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffle generator for one epoch."""
    return (seed * _EPOCH_MIX + epoch) & _SEED_MASK


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """Seed of the augmentation RNG for one batch of one epoch."""
    return (epoch_seed(seed, epoch) * _BATCH_MIX + batch) & _SEED_MASK


def shard_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """Seed of the augmentation RNG for rank ``rank``'s slice of one batch (rank 0's is
    ``batch_seed``: a single process keeps its augmentations)."""
    return (batch_seed(seed, epoch, batch) + rank * _RANK_MIX) & _SEED_MASK


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of a batch's indices: sizes differ by at most one,
    the first ranks take the remainder."""
    return indices.tensor_split(world_size)[rank] if world_size > 1 else indices


def epoch_order(size: int, *, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """Sample indices of one epoch: a (seed, epoch)-determined permutation, or 0..size-1."""
    if not shuffle:
        return torch.arange(size)
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(size, generator=gen)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch, random and numpy; in the main process restore their states afterwards."""
    in_worker = get_worker_info() is not None
    saved = None if in_worker else (torch.get_rng_state(), random.getstate(), np.random.get_state())
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


class _SeededBatches(Dataset):
    """Wraps a dataset so each batch of keys ``(index, batch_seed)`` loads under its own seed.

    Random augmentations then depend on (seed, epoch, batch) only, not on the
    worker that happens to load the batch, nor on how long the workers have lived.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with _seeded(seed):
            return self.dataset[index]

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list[Any]:
        with _seeded(keys[0][1]):
            return [self.dataset[index] for index, _ in keys]


@dataclass
class _EpochPlan:
    """Which batches the current epoch holds; shared by an EpochLoader and its sampler.

    Kept apart from EpochLoader so the torch DataLoader's sampler does not point
    back at the loader: that reference cycle would delay worker shutdown to the
    garbage collector (which takes seconds with persistent workers).
    """

    size: int
    batch_size: int
    shuffle: bool
    seed: int
    drop_last: bool
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    skip_batches: int = 0

    def num_batches(self) -> int:
        """Batches of the whole epoch (global batches under DDP)."""
        if self.drop_last:
            return self.size // self.batch_size
        return math.ceil(self.size / self.batch_size)

    def shard_size(self, batch: int) -> int:
        """How many of batch ``batch``'s samples this rank loads."""
        size = min(self.batch_size, self.size - batch * self.batch_size)
        return size // self.world_size + (self.rank < size % self.world_size)

    def batch_indices(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(batch number, this rank's sample indices) of the epoch from ``skip_batches``
        on; a batch that leaves this rank no sample is skipped."""
        order = epoch_order(self.size, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch)
        for b in range(self.skip_batches, self.num_batches()):
            indices = shard(
                order[b * self.batch_size : (b + 1) * self.batch_size], self.rank, self.world_size
            )
            if indices.numel():
                yield b, indices

    def batches_left(self) -> int:
        """Batches this rank yields from ``skip_batches`` to the epoch's end."""
        return sum(self.shard_size(b) > 0 for b in range(self.skip_batches, self.num_batches()))


class _EpochBatchSampler:
    """Batch sampler over the plan's current epoch; keys carry the batch's seed."""

    def __init__(self, plan: _EpochPlan) -> None:
        self.plan = plan

    def __len__(self) -> int:
        return self.plan.batches_left()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        plan = self.plan
        for b, indices in plan.batch_indices():
            seed = shard_seed(plan.seed, plan.epoch, b, plan.rank)
            yield [(i, seed) for i in indices.tolist()]


class EpochLoader:
    """Iterable over ``(inputs, targets)`` batches of one epoch at a time.

    Call ``set_epoch`` before each epoch; ``len()`` is the number of batches in a
    full epoch (global batches: under DDP, ``rank`` of ``world_size`` yields its slice of
    each, see the module docstring). TensorDatasets are batched by direct tensor
    indexing; any other dataset goes through a torch DataLoader whose workers persist
    across epochs (``close()`` stops them). Random transforms run under a seed derived from
    (seed, epoch, batch), so augmentations repeat exactly on resume.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._plan = _EpochPlan(
            size=len(dataset),  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        self._torch_loader: DataLoader | None = None

    @property
    def batch_size(self) -> int:
        return self._plan.batch_size

    @property
    def seed(self) -> int:
        return self._plan.seed

    @property
    def rank(self) -> int:
        return self._plan.rank

    @property
    def world_size(self) -> int:
        return self._plan.world_size

    @property
    def epoch(self) -> int:
        return self._plan.epoch

    @property
    def skip_batches(self) -> int:
        return self._plan.skip_batches

    def __len__(self) -> int:
        return self._plan.num_batches()

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch to iterate next; start it at batch ``skip_batches``."""
        if not 0 <= skip_batches <= len(self):
            raise ValueError(f"skip_batches must be in [0, {len(self)}], got {skip_batches}")
        self._plan.epoch = epoch
        self._plan.skip_batches = skip_batches

    def close(self) -> None:
        """Stop the DataLoader's worker processes (they restart on the next iteration)."""
        self._torch_loader = None

    def __iter__(self) -> Iterator[Any]:
        if isinstance(self.dataset, TensorDataset):
            return self._iter_tensors(self.dataset)
        return iter(self._loader())

    def _iter_tensors(self, dataset: TensorDataset) -> Iterator[tuple[torch.Tensor, ...]]:
        pin = self.pin_memory and torch.cuda.is_available()
        for _, indices in self._plan.batch_indices():
            batch = tuple(t[indices] for t in dataset.tensors)
            yield tuple(t.pin_memory() for t in batch) if pin else batch

    def _loader(self) -> DataLoader:
        if self._torch_loader is None:
            self._torch_loader = DataLoader(
                _SeededBatches(self.dataset),
                batch_sampler=_EpochBatchSampler(self._plan),
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
                generator=torch.Generator().manual_seed(self.seed),
            )
        return self._torch_loader


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> EpochLoader:
    """Build an EpochLoader; see its docstring."""
    return EpochLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
    )
