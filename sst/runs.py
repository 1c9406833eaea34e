"""Run folders: their layout, and the one reader that everything after training uses.

One run, one folder (``<output_dir>/runs/<name>-<hash>``, see ``sst.identity``)::

    config.json            the fully resolved config (plain JSON, group choices included)
    metrics.jsonl          one record per line: step, epoch, train and test metrics
    summary.json           written when the run finishes ("finished": true)
    checkpoints/last.pt    model, optimizer, sparsity state (top-level key "sparsity"),
                           model_meta (what rebuilds the model without the dataset), RNG, step
    train.log, wandb/, .hydra/   console log, the W&B run, Hydra's own record
    .lock                  held while a process trains the run (``sst.runlock``)

``RunFolder`` reads the light files (config, summary, metrics) for tables; ``load_run``
also rebuilds the trained model with its masks (distillation teachers, pruning from a
trained run, export).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT = Path("checkpoints") / "last.pt"

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
        """``summary.json`` of a finished run, else None."""
        path = self.path / SUMMARY_FILE
        if path.exists():
            summary = json.loads(path.read_text())
            if summary.get("finished"):
                return summary
        return None

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
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def checkpoint_sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.checkpoint_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def finished_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` if the run finished, else None."""
    return RunFolder(run_dir).summary


@dataclass
class LoadedRun:
    """A trained run: its folder, resolved config, summary, model (trained weights, masks
    applied, eval mode), masks (layer name -> boolean tensor), step and the (C, H, W) of one
    input example."""

    folder: RunFolder
    config: dict[str, Any]
    summary: dict[str, Any] | None
    model: nn.Module
    masks: dict[str, torch.Tensor]
    step: int
    input_shape: tuple[int, ...]


def build_model(model_meta: dict[str, Any]) -> nn.Module:
    """The model a checkpoint's ``model_meta`` describes, with fresh weights."""
    from hydra.utils import instantiate

    return instantiate(
        model_meta["model"],
        num_classes=model_meta["num_classes"],
        input_shape=tuple(model_meta["input_shape"]),
    )


def load_run(path: str | Path, *, require_finished: bool = True) -> LoadedRun:
    """Rebuilds a run's model from its folder alone (no dataset needed): architecture from
    the checkpoint's ``model_meta``, weights and masks from ``checkpoints/last.pt``."""
    folder = RunFolder(path)
    summary = folder.summary
    if require_finished and summary is None:
        raise ValueError(f"{folder.path} is not a finished sst run (no finished summary.json)")
    if not folder.checkpoint_path.exists():
        raise FileNotFoundError(f"{folder.path} has no checkpoint: {folder.checkpoint_path}")
    state = torch.load(folder.checkpoint_path, map_location="cpu", weights_only=True)
    if not state.get("model_meta"):
        raise ValueError(
            f"{folder.checkpoint_path} was written before checkpoints described their model "
            "(no model_meta): retrain the run with this version of sst"
        )
    model = build_model(state["model_meta"])
    model.load_state_dict(state["model"])
    masks = dict((state.get("sparsity") or {}).get("masks", {}))
    from .sparsity.layers import weight_owner

    with torch.no_grad():
        for name, mask in masks.items():
            module, attr = weight_owner(model, name)
            getattr(module, attr).mul_(mask.to(getattr(module, attr).dtype))
    return LoadedRun(
        folder=folder,
        config=folder.config,
        summary=summary,
        model=model.eval(),
        masks=masks,
        step=int(state["step"]),
        input_shape=tuple(state["model_meta"]["input_shape"]),
    )
