"""Rebuild a trained run's model from its folder alone: distillation teachers, one-shot
pruning from a dense run, condensed export and mask figures all read runs this way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sst.sparsity.layers import weight_owner

from .checkpoint import load_latest
from .folder import RunFolder


@dataclass
class LoadedRun:
    """A trained run: its folder, resolved config, summary, model (trained weights, masks
    applied, eval mode), masks (layer name -> boolean tensor), step, the (C, H, W) of one
    input example and the number of classes it predicts."""

    folder: RunFolder
    config: dict[str, Any]
    summary: dict[str, Any] | None
    model: nn.Module
    masks: dict[str, torch.Tensor]
    step: int
    input_shape: tuple[int, ...]
    num_classes: int


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
    the checkpoint's ``model_meta``, weights and masks from ``checkpoints/last.pt``
    (``prev.pt`` when ``last.pt`` cannot be read)."""
    folder = RunFolder(path)
    summary = folder.summary
    if require_finished and summary is None:
        raise ValueError(f"{folder.path} is not a finished sst run (no finished summary.json)")
    found = load_latest(folder.checkpoint_path)  # last.pt, else prev.pt
    if found is None:
        raise FileNotFoundError(f"{folder.path} has no checkpoint: {folder.checkpoint_path}")
    state, _ = found
    if not state.get("model_meta"):
        raise ValueError(
            f"{folder.checkpoint_path} was written before checkpoints described their model "
            "(no model_meta): retrain the run with this version of sst"
        )
    model = build_model(state["model_meta"])
    model.load_state_dict(state["model"])
    masks = dict((state.get("sparsity") or {}).get("masks", {}))
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
        num_classes=int(state["model_meta"]["num_classes"]),
    )
