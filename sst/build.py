"""The one place that turns a composed config into objects."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .checkpoint import seed_everything
from .config import ConfigError
from .data import make_loader
from .distill import DistillHook, load_teacher, teacher_identity
from .hooks import Hook, SparsityHook
from .loop import Loop, LoopSettings, step_plan
from .runlog import RunLog, git_commit
from .settings import check_config
from .teacher import teacher_folder

DEVICES = ("auto", "cpu", "cuda", "mps")


@contextmanager
def config_errors(group: str, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Re-raises a bad setting's error (and ``also``) as a ``ConfigError`` that starts with
    the config group's name."""
    try:
        yield
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError(f"{group}: {cause}") from cause
    except (ValueError, TypeError, FileNotFoundError, *also) as error:
        raise ConfigError(f"{group}: {error}") from error


def make(group: str, node: DictConfig, **kwargs: Any) -> Any:
    """instantiate(node, **kwargs) under ``config_errors(group)``."""
    with config_errors(group):
        return instantiate(node, **kwargs)


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def pick_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"trainer.device={name!r} is unknown: allowed values are {DEVICES}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible")
    return torch.device(name)


def loop_settings(trainer: DictConfig) -> LoopSettings:
    keys = LoopSettings.__dataclass_fields__
    try:
        return LoopSettings(**{k: v for k, v in trainer.items() if k in keys})
    except ValueError as error:
        raise ConfigError(str(error)) from error


def build_method(cfg: DictConfig, model, optimizer, total_steps: int, data, device):
    """The sparsity method (``sparsity=dense`` when none), sized for a stage of
    ``total_steps`` optimizer steps."""
    example = torch.zeros(1, *data.input_shape, device=device)
    return make(
        "sparsity",
        cfg.sparsity,
        model=model,
        optimizer=optimizer,
        total_steps=total_steps,
        seed=cfg.seed,
        example_input=example,
    )


def build_hooks(cfg: DictConfig, method, device: torch.device) -> list[Hook]:
    """The loop's hooks: distillation (when enabled) and the sparsity method. A teacher
    named by overrides must have finished (``sst.train.run`` trains it first)."""
    hooks: list[Hook] = [SparsityHook(method)]
    if cfg.distill.enabled:
        # RuntimeError: teacher weights that do not fit the teacher's architecture
        with config_errors("distill", also=(RuntimeError,)):
            loaded = load_teacher(teacher_folder(cfg))
            teacher = place_model(loaded.model, device, cfg.trainer.channels_last)
            hook = DistillHook(
                teacher.eval().requires_grad_(False),
                temperature=cfg.distill.temperature,
                weight=cfg.distill.weight,
                identity=teacher_identity(loaded),
            )
        hooks.insert(0, hook)
    return hooks


def run_info(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    """The run's key settings, repeated in ``summary.json`` so tables need no config parsing."""
    return {
        "name": cfg.get("name"),
        "model": choices.get("model"),
        "dataset": choices.get("dataset"),
        "method": choices.get("sparsity"),
        "density": cfg.sparsity.density,
        "distribution": cfg.sparsity.get("distribution"),
        "structure": cfg.sparsity.get("structure", "unstructured"),
        "seed": cfg.seed,
        "experiment": choices.get("experiment"),
        "git_commit": git_commit(),
    }


def build(cfg: DictConfig, run_dir: str | Path, choices: dict[str, str] | None = None) -> Loop:
    """Composed config -> a ready ``Loop`` writing into ``run_dir``."""
    choices = choices or {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "multi-process (DDP) training is not supported yet: launch sst-train as a single "
            "process (WORLD_SIZE is set to more than 1)"
        )
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r} must be a non-negative integer")
    check_config(cfg)
    trainer = cfg.trainer
    settings = loop_settings(trainer)
    seed_everything(cfg.seed, deterministic=trainer.deterministic)
    device = pick_device(trainer.device)
    if trainer.batch_size < 1 or trainer.batch_size % settings.grad_accumulation:
        raise ConfigError(
            f"trainer.batch_size={trainer.batch_size} must be a positive multiple of "
            f"trainer.grad_accumulation={settings.grad_accumulation}"
        )

    data = make("dataset", cfg.dataset)
    model = make(
        "model", cfg.model, num_classes=data.num_classes, input_shape=tuple(data.input_shape)
    )
    model = place_model(model, device, settings.channels_last)
    micro_batch = trainer.batch_size // settings.grad_accumulation
    train_loader = make_loader(
        data.train,
        batch_size=micro_batch,
        shuffle=True,
        seed=cfg.seed,
        num_workers=trainer.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    test_loader = make_loader(
        data.test,
        batch_size=trainer.eval_batch_size,
        shuffle=False,
        seed=cfg.seed,
        num_workers=trainer.num_workers,
        pin_memory=device.type == "cuda",
    )
    optimizer = make("optimizer", cfg.optimizer, params=model.parameters())
    per_epoch, stage_steps = step_plan(len(train_loader), settings)
    lr_multiplier = make(
        "lr_schedule", cfg.lr_schedule, steps_per_epoch=per_epoch, total_steps=stage_steps
    )
    method = build_method(cfg, model, optimizer, stage_steps, data, device)
    hooks = build_hooks(cfg, method, device)
    model_meta = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
    }

    config = OmegaConf.to_container(cfg, resolve=True)
    info = run_info(cfg, choices)
    # the groups as resolved, then the key settings that are not config keys of their own
    run_log = make_run_log(cfg, run_dir, {**info, **config, "choices": choices})
    return Loop(
        model=model,
        optimizer=optimizer,
        lr_multiplier=lr_multiplier,
        train_loader=train_loader,
        test_loader=test_loader,
        num_classes=data.num_classes,
        settings=settings,
        device=device,
        run_log=run_log,
        run_dir=run_dir,
        hooks=hooks,
        run_info=info,
        stages=method.stages(stage_steps),
        model_meta=model_meta,
    )


def make_run_log(cfg: DictConfig, run_dir: str | Path, config: dict[str, Any]) -> RunLog:
    logger = cfg.logger
    try:
        return RunLog(
            run_dir,
            config=config,
            kind=logger.kind,
            mode=logger.get("mode", "offline"),
            project=logger.get("project", "sst"),
            entity=logger.get("entity"),
            name=cfg.get("name"),
            group=cfg.get("group"),
            tags=list(logger.get("tags") or []),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error
