"""Run folders: their layout, and the one reader that everything after training uses.

One run, one folder (``<output_dir>/runs/<name>-<hash>``, see ``sst.runs.identity``)::

    config.json            the fully resolved config (plain JSON, group choices included)
    metrics.jsonl          one record per line: step, epoch, train and test metrics
    summary.json           written when the run finishes ("finished": true)
    checkpoints/last.pt    model, optimizer, sparsity state (top-level key "sparsity"),
                           model_meta (what rebuilds the model without the dataset), RNG, step
    train.log, wandb/       console log, the W&B run
    .lock                  held while a process trains the run (``sst.runs.lock``)

``RunFolder`` reads the light files (config, summary, metrics) for tables;
``sst.runs.load.load_run`` also rebuilds the trained model with its masks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from .jsonl import read_jsonl
from .lock import LOCK_FILE

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"  # Hydra's job log (conf/config.yaml), written from the job's start
CHECKPOINT = Path("checkpoints") / "last.pt"  # the one place that names it; prev.pt beside it

log = logging.getLogger(__name__)

FINISHED, UNFINISHED, EMPTY = "finished", "unfinished", "empty"


class RunFolder:
    """A run folder's files, read on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @cached_property
    def config(self) -> dict[str, Any]:
        """The resolved config (``config.json``); a folder without one raises."""
        path = self.path / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{self.path} is not an sst run folder: {path} is missing")
        return json.loads(path.read_text())

    @property
    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` of a finished run, else None; a file that cannot be read raises
        ``ValueError`` naming it."""
        path = self.path / SUMMARY_FILE
        if not path.exists():
            return None
        try:
            summary = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} cannot be read: {error}") from error
        if not isinstance(summary, dict):
            raise ValueError(f"{path} cannot be read: not a JSON object")
        return summary if summary.get("finished") else None

    @property
    def status(self) -> str:
        """``finished`` (summary written), ``unfinished`` (started: a config or checkpoint
        but no summary, i.e. running, interrupted or crashed) or ``empty``."""
        if self.summary is not None:
            return FINISHED
        if (self.path / CONFIG_FILE).exists() or self.checkpoint_path.exists():
            return UNFINISHED
        return EMPTY

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (a line cut short by a hard kill is skipped)."""
        return read_jsonl(self.path / METRICS_FILE)

    def checkpoint_sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.checkpoint_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def remove_if_unused(run_dir: str | Path) -> bool:
    """Removes a run folder that holds nothing but an empty lock and the log of a job that
    failed before training (Hydra makes the folder and its ``train.log`` before sst checks
    the settings); returns whether it did. A folder with anything else is left alone."""
    path = Path(run_dir)
    if not path.is_dir():
        return False
    allowed = {LOG_FILE, LOCK_FILE}
    entries = list(path.iterdir())
    if any(e.name not in allowed or not e.is_file() for e in entries):
        return False
    if any(e.name == LOCK_FILE and e.stat().st_size for e in entries):  # held by a process
        return False
    for entry in entries:
        entry.unlink()
    path.rmdir()
    if path.parent.name == "runs":  # <output_dir>/runs and <output_dir>, if made for it
        with contextlib.suppress(OSError):
            path.parent.rmdir()
            path.parent.parent.rmdir()
    return True


def finished_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` if the run finished, else None. An unreadable summary is
    a run not known to have finished: a relaunch resumes from its checkpoint and writes the
    summary again."""
    try:
        return RunFolder(run_dir).summary
    except ValueError as error:
        log.warning("%s; the run is treated as unfinished", error)
        return None
