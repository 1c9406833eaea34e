"""Writes and finds a run's checkpoint (``sst.runs.checkpoint``: atomic, ``prev.pt`` kept);
rank 0 alone writes, every rank waits for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sst import dist
from sst.runs.checkpoint import load_latest, save_atomic


class Checkpointer:
    """``path`` is the run folder's ``checkpoints/last.pt`` (None: a loop without a folder
    saves nothing); ``saved_step`` is the step of the newest checkpoint, saved or loaded."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.saved_step: int | None = None

    def save(self, state: dict[str, Any], step: int) -> None:
        if self.path is not None and dist.is_main():
            save_atomic(state, self.path)
        self.saved_step = step
        dist.barrier()

    def load(self) -> tuple[dict[str, Any], Path] | None:
        """The newest readable checkpoint and its file, None if the run has none."""
        if self.path is None:
            return None
        return load_latest(self.path, owner=True)
