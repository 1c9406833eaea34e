"""Atomic checkpoints and RNG state, loadable with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_write, stale_temporaries

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, in types that ``weights_only`` loading accepts."""
    np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and torch; ``deterministic`` also asks torch for deterministic
    kernels (slower on GPU, and raises where none exists)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


class CorruptCheckpoint(RuntimeError):
    """No checkpoint of the run can be read."""


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``prev.pt`` beside ``last.pt``."""
    return Path(path).with_name("prev.pt")


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` through ``atomic_write``: a crash mid-write never destroys a
    checkpoint, and the one ``path`` held before is kept as ``prev.pt``."""
    atomic_write(path, lambda handle: torch.save(state, handle), keep_previous=previous_path(path))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest(path: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint, ``path`` or else its ``prev.pt``, with the file it
    came from; None when neither exists. Stale temporary files of a write that a kill cut
    short are removed. Raises ``CorruptCheckpoint`` naming the files when none can be read.
    """
    path = Path(path)
    for stale in stale_temporaries(path):
        log.warning("removing %s, left by a checkpoint write that was cut short", stale)
        stale.unlink(missing_ok=True)
    failures = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            state = load(candidate)
        except Exception as error:  # truncated zip, empty file, bad pickle: all unreadable
            failures.append(f"{candidate} ({type(error).__name__}: {error})")
            log.warning("checkpoint %s cannot be read: %s", candidate, error)
            continue
        if failures:
            log.warning("resuming from the previous checkpoint %s instead", candidate)
        return state, candidate
    if failures:
        raise CorruptCheckpoint(
            "no checkpoint of this run can be read: "
            + "; ".join(failures)
            + ". Delete the run folder's checkpoints/ to train the run again from the start."
        )
    return None
