"""The one place that turns a composed config into objects: data, model, optimizer, LR
schedule, sparsity method, hooks, run log, and the ``Loop`` that trains them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from sst import dist
from sst.condensed.training import SparseCompute
from sst.config import runtime
from sst.config.keys import ConfigError
from sst.config.schema import SCHEMAS, check_config
from sst.data import make_loader
from sst.engine.distill import DistillHook, load_teacher, teacher_identity
from sst.engine.hooks import Hook, SparseComputeHook, SparsityHook
from sst.engine.loop import Loop
from sst.engine.precision import Precision
from sst.engine.rng import seed_everything
from sst.engine.settings import TrainerSettings, step_plan
from sst.runs.identity import config_hash, identity
from sst.runs.load import load_run
from sst.runs.runlog import RunLog, SilentRunLog, git_commit, in_wandb_sweep

from .device import check_launch, pick_device, place_model, prepare_model
from .teacher import plan_teacher


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


def trainer_settings(trainer: DictConfig) -> TrainerSettings:
    """``trainer`` as the engine's settings (its values checked there)."""
    try:
        return TrainerSettings(**OmegaConf.to_container(trainer, resolve=True))
    except ValueError as error:
        raise ConfigError(str(error)) from error


def run_weights(sparsity: DictConfig) -> dict[str, Any]:
    """The trained weights of the finished runs that the sparsity method's settings name
    (the keys in its ``RUN_WEIGHTS``, e.g. one-shot's ``dense_run``), read from their folders
    (``sst.runs.load_run``): the method itself takes a state dict."""
    try:
        keys = getattr(get_object(sparsity._target_), "RUN_WEIGHTS", ())
    except Exception:  # an unimportable target is reported when it is instantiated
        return {}
    out = {}
    for key in keys:
        folder = sparsity.get(key)
        if isinstance(folder, str):
            try:
                out[key] = load_run(folder).model.state_dict()
            except (FileNotFoundError, ValueError) as error:
                raise ConfigError(f"sparsity.{key}={folder!r}: {error}") from error
    return out


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
        **run_weights(cfg.sparsity),
    )


def enforce_masks(method, settings: TrainerSettings) -> None:
    """The mask set's per-run switches: the DDP mask check (``trainer.mask_check``), and
    gradient masking when the loop clips by the global norm (``trainer.grad_clip``), which
    must not see the gradients of pruned weights."""
    method.mask_set.check_ranks = settings.mask_check
    method.mask_set.mask_grads = settings.grad_clip is not None


def trains_condensed(cfg: DictConfig) -> bool:
    """Whether ``trainer.sparse_compute`` may train masked layers in condensed form (its
    parameters then change at mask updates: no DDP reducer, see ``sst.dist.Replicated``)."""
    return cfg.trainer.get("sparse_compute", "off") != "off"


def build_hooks(
    cfg: DictConfig,
    method,
    device: torch.device,
    teacher_folder: Path | None,
    optimizer=None,
    data_shape: tuple[int, tuple[int, ...]] | None = None,
) -> list[Hook]:
    """The loop's hooks: distillation (with a teacher), training in condensed form
    (``trainer.sparse_compute``) and the sparsity method. ``data_shape`` = (classes, input
    shape) of the run's data set, which the teacher must match. Called before the run log is
    made, so that no folder is written for a teacher that cannot be loaded."""
    hooks: list[Hook] = [SparsityHook(method)]
    if trains_condensed(cfg):
        with config_errors("trainer"):
            form = SparseCompute(
                method.model, optimizer, method.mask_set, cfg.trainer.sparse_compute
            )
        hooks.insert(0, SparseComputeHook(form, method))
    if teacher_folder is not None:
        # RuntimeError: teacher weights that do not fit the teacher's architecture
        with config_errors("distill", also=(RuntimeError,)):
            loaded = load_teacher(teacher_folder, *(data_shape or (None, None)))
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


@dataclass
class Placement:
    """Where and how a run trains: its settings, launch, device and precision."""

    settings: TrainerSettings
    launch: dist.Environment
    device: torch.device
    precision: Precision


def check_settings(cfg: DictConfig) -> TrainerSettings:
    """Every key and value of the composed config that can be checked before anything is
    built (``sst.config.schema``, the trainer's settings); returns the trainer's."""
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r} must be a non-negative integer")
    check_config(cfg, {**SCHEMAS, "trainer": TrainerSettings})
    return trainer_settings(cfg.trainer)


def place(cfg: DictConfig) -> Placement:
    """Checks the run's settings, starts the process group and seeds every RNG."""
    settings = check_settings(cfg)
    launch = dist.environment()
    check_launch(settings, launch)
    device = pick_device(settings.device, launch)
    with config_errors("trainer"):
        precision = Precision(settings.amp, device)
    dist.setup(launch, device)
    # the same seed on every rank: the same initial weights and masks everywhere
    seed_everything(cfg.seed, deterministic=settings.deterministic)
    return Placement(settings, launch, device, precision)


def loaders(cfg: DictConfig, data, where: Placement) -> tuple[Any, Any]:
    """(train, test) loaders of global (micro-)batches, each rank its slice of every one."""
    settings, launch = where.settings, where.launch
    common = {
        "seed": cfg.seed,
        "num_workers": settings.num_workers,
        "pin_memory": where.device.type == "cuda",
        "rank": launch.rank,
        "world_size": launch.world_size,
    }
    train = make_loader(
        data.train,
        batch_size=settings.batch_size // settings.grad_accumulation,
        shuffle=True,
        drop_last=True,
        **common,
    )
    test = make_loader(data.test, batch_size=settings.eval_batch_size, shuffle=False, **common)
    return train, test


def build(
    cfg: DictConfig,
    run_dir: str | Path,
    choices: dict[str, str] | None = None,
    *,
    teacher_folder: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Loop:
    """Composed config -> a ready ``Loop`` writing into ``run_dir``. A distilled run loads
    its teacher from ``teacher_folder`` (planned here when not given); ``overrides``
    (default: the current Hydra job's) are recorded in ``config.json``."""
    choices = choices or {}
    where = place(cfg)
    with dist.main_first():  # rank 0 downloads or unpacks, the others then read
        data = make("dataset", cfg.dataset)
    shape = tuple(data.input_shape)
    model = make("model", cfg.model, num_classes=data.num_classes, input_shape=shape)
    model = prepare_model(model, where.device, where.settings, where.launch)
    train_loader, test_loader = loaders(cfg, data, where)
    # DDP wraps the model; the optimizer steps its parameters (the model's own tensors) and
    # the sparsity method masks the unwrapped model's weights
    trained = dist.wrap(model, where.device, changing_params=trains_condensed(cfg))
    optimizer = make("optimizer", cfg.optimizer, params=trained.parameters())
    with config_errors("trainer"):
        per_epoch, stage_steps = step_plan(len(train_loader), where.settings)
    lr_multiplier = make(
        "lr_schedule", cfg.lr_schedule, steps_per_epoch=per_epoch, total_steps=stage_steps
    )
    method = build_method(cfg, model, optimizer, stage_steps, data, where.device)
    enforce_masks(method, where.settings)
    if cfg.distill.enabled and teacher_folder is None:
        teacher_folder = plan_teacher(cfg).folder
    teacher = Path(teacher_folder) if cfg.distill.enabled else None
    hooks = build_hooks(cfg, method, where.device, teacher, optimizer, (data.num_classes, shape))
    info = run_info(cfg, choices)
    record = run_record(cfg, info, choices, overrides)
    return Loop(
        model=trained,
        optimizer=optimizer,
        lr_multiplier=lr_multiplier,
        train_loader=train_loader,
        test_loader=test_loader,
        num_classes=data.num_classes,
        settings=where.settings,
        device=where.device,
        steps_per_epoch=per_epoch,
        stages=method.stages(stage_steps),
        precision=where.precision,
        run_log=make_run_log(cfg, run_dir, record) if dist.is_main() else SilentRunLog(),
        run_dir=run_dir,
        hooks=hooks,
        run_info=info,
        model_meta={
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "num_classes": data.num_classes,
            "input_shape": list(shape),
        },
    )


def run_record(
    cfg: DictConfig, info: dict[str, Any], choices: dict[str, str], overrides: list[str] | None
) -> dict[str, Any]:
    """``config.json``: the run's info, its resolved config, group choices, command-line
    overrides (default: the current Hydra job's), and its identity with its hash (tables
    pair runs by it)."""
    overrides = runtime.job_overrides() if overrides is None else overrides
    record = {**info, **OmegaConf.to_container(cfg, resolve=True)}
    record.update(choices=choices, overrides=overrides, identity_hash=config_hash(cfg))
    record["identity"] = identity(cfg)
    return record


def make_run_log(cfg: DictConfig, run_dir: str | Path, config: dict[str, Any] | None) -> RunLog:
    """The run's ``RunLog`` from ``logger.*``: unset W&B settings (null) leave W&B's
    environment variables in charge; the default tags name the method and the experiment
    preset."""
    logger = cfg.logger
    shared_id = os.environ.get("WANDB_RUN_ID")
    if shared_id and runtime.is_multirun() and not in_wandb_sweep() and logger.kind == "wandb":
        raise ConfigError(
            f"WANDB_RUN_ID={shared_id} names one W&B run, and every job of this sweep (-m) "
            "would log into it: unset it (each run folder keeps its own W&B id)"
        )
    try:
        return RunLog(
            run_dir,
            config=config,
            kind=logger.kind,
            mode=logger.get("mode"),
            project=logger.get("project"),
            entity=logger.get("entity"),
            name=cfg.get("name"),
            group=cfg.get("group"),
            tags=None if logger.get("tags") is None else list(logger.tags),
            job_type=logger.get("job_type"),
            default_tags=default_tags(cfg, config),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error


def default_tags(cfg: DictConfig, config: dict[str, Any] | None) -> list[str]:
    """The W&B tags of a run whose ``logger.tags`` is unset: its sparsity method (the
    ``sparsity`` choice, else the method's class) and its experiment preset, if any."""
    choices = (config or {}).get("choices") or (runtime.job_choices() if runtime.running() else {})
    target = str(cfg.sparsity.get("_target_", "")) if "sparsity" in cfg else ""
    method = choices.get("sparsity") or target.rsplit(".", 1)[-1].lower()
    tags = [method] if method else []
    experiment = choices.get("experiment")
    if experiment and experiment not in ("null", "None"):
        tags.append(str(experiment))
    return tags
