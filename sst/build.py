"""The one place that turns a composed config into objects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import dist
from .checkpoint import seed_everything
from .config import ConfigError
from .data import make_loader
from .distill import DistillHook, load_teacher, teacher_identity
from .hooks import Hook, SparsityHook
from .loop import Loop, LoopSettings, step_plan
from .runlog import RunLog, SilentRunLog, git_commit
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
    model: nn.Module, device: torch.device, trainer: DictConfig, launch: dist.Environment
) -> nn.Module:
    """The model on its device; with ``trainer.sync_batchnorm`` in a multi-process run its
    BatchNorm layers become SyncBatchNorm (statistics over the global batch)."""
    model = place_model(model, device, trainer.channels_last)
    if trainer.get("sync_batchnorm", False) and launch.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def check_launch(trainer: DictConfig, settings: LoopSettings, launch: dist.Environment) -> None:
    """What a multi-process launch needs of the trainer settings, checked before the
    process group starts (a refused rank must not leave the others waiting for it)."""
    per_rank_batch(trainer.batch_size, settings.grad_accumulation, launch.world_size)
    if trainer.get("sync_batchnorm", False) and launch.distributed:
        device = pick_device(trainer.device, launch)
        if device.type != "cuda":
            raise ConfigError(
                "trainer.sync_batchnorm=true needs CUDA devices: PyTorch's SyncBatchNorm does "
                f"not run on {device.type}; set trainer.sync_batchnorm=false"
            )


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
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r} must be a non-negative integer")
    check_config(cfg)
    trainer = cfg.trainer
    settings = loop_settings(trainer)
    launch = dist.environment()
    check_launch(trainer, settings, launch)
    device = pick_device(trainer.device, launch)
    if settings.amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"trainer.amp=fp16 needs a CUDA device (the device is {device.type}): "
            "use trainer.amp=bf16 or trainer.amp=none"
        )
    dist.setup(launch, device)
    # the same seed on every rank: the same initial weights and masks everywhere
    seed_everything(cfg.seed, deterministic=trainer.deterministic)

    with dist.main_first():  # rank 0 downloads or unpacks, the others then read
        data = make("dataset", cfg.dataset)
    model = make(
        "model", cfg.model, num_classes=data.num_classes, input_shape=tuple(data.input_shape)
    )
    model = prepare_model(model, device, trainer, launch)
    # loaders yield global (micro-)batches, each rank its slice of every one
    shards = {"rank": launch.rank, "world_size": launch.world_size}
    train_loader = make_loader(
        data.train,
        batch_size=trainer.batch_size // settings.grad_accumulation,
        shuffle=True,
        seed=cfg.seed,
        num_workers=trainer.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        **shards,
    )
    test_loader = make_loader(
        data.test,
        batch_size=trainer.eval_batch_size,
        shuffle=False,
        seed=cfg.seed,
        num_workers=trainer.num_workers,
        pin_memory=device.type == "cuda",
        **shards,
    )
    # DDP wraps the model; the optimizer steps its parameters (the model's own tensors) and
    # the sparsity method masks the unwrapped model's weights
    trained = dist.wrap(model, device)
    optimizer = make("optimizer", cfg.optimizer, params=trained.parameters())
    per_epoch, stage_steps = step_plan(len(train_loader), settings)
    lr_multiplier = make(
        "lr_schedule", cfg.lr_schedule, steps_per_epoch=per_epoch, total_steps=stage_steps
    )
    method = build_method(cfg, model, optimizer, stage_steps, data, device)
    method.mask_set.check_ranks = trainer.get("mask_check", True)
    hooks = build_hooks(cfg, method, device)
    model_meta = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
    }

    config = OmegaConf.to_container(cfg, resolve=True)
    info = run_info(cfg, choices)
    # the groups as resolved, then the key settings that are not config keys of their own
    record = {**info, **config, "choices": choices, "overrides": command_line_overrides()}
    run_log = make_run_log(cfg, run_dir, record) if dist.is_main() else SilentRunLog()
    return Loop(
        model=trained,
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


def command_line_overrides() -> list[str] | None:
    """The overrides of the ``sst-train`` command that launched this job (None from Python)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


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
