"""Checkpoint files: written atomically with the one before kept as ``prev.pt``, read with
``torch.load(weights_only=True)``, falling back to ``prev.pt`` when ``last.pt`` is unreadable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sst.files import atomic_write, stale_temporaries

log = logging.getLogger(__name__)


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
