"""Typed schemas of the config groups that have no ``_target_``, and the type check of
every setting before anything is built.

A value of the wrong type (``trainer.epochs=ten``, ``sparsity.density=abc``) is reported with
the setting's path and the type it needs, before the first step; groups with a ``_target_``
are checked against the type hints of its signature.

Why not Hydra's ConfigStore (structured configs) for these dataclasses: with OmegaConf 2.3
``DistillSettings`` cannot be stored at all (``teacher_run: str | list[str]``: "Unions of
containers are not supported"); a str field converts a number silently (``logger.kind=3``
becomes ``'3'`` instead of an error); a wrong key gives "Key 'tempreature' not in
'Distill'" without the close matches or the list of settings; and the groups with a
``_target_`` (most of them) would need a second, hand-kept copy of the target's signature,
which the check here reads from the signature itself.
"""

from __future__ import annotations

import inspect
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from .keys import ConfigError, check_keys, forwarded_functions

TOP_LEVEL = ("seed", "output_dir", "name", "group", "optimized_metric")


@dataclass
class LoggerSettings:
    """``conf/logger/*.yaml``."""

    kind: str
    mode: str | None = None  # None: WANDB_MODE, else offline (sst.runs.runlog)
    project: str | None = None  # None: WANDB_PROJECT, else sst
    entity: str | None = None
    tags: list[str] | None = None  # None: WANDB_TAGS, else the method and experiment
    job_type: str | None = None  # None: WANDB_JOB_TYPE, else train


@dataclass
class DistillSettings:
    """``conf/distill/*.yaml``."""

    enabled: bool
    teacher_run: str | list[str] | None = None  # a run folder, or overrides (sst.launch.teacher)
    temperature: float = 4.0
    weight: float = 0.9


@dataclass
class SlurmSettings:
    """``slurm:`` of ``conf/launcher/submitit_slurm.yaml``: the SLURM resources of sweep
    jobs (read by the launcher, not by the run)."""

    partition: str | None
    nodes: int
    gpus: int
    tasks_per_node: int
    cpus: int
    mem_gb: int
    time_min: int
    array_parallelism: int
    max_requeues: int


# The schemas of the groups without a ``_target_`` that the run itself reads; the trainer's
# is the engine's ``TrainerSettings``, added by the launcher (``sst.launch.build``).
SCHEMAS = {
    "logger": LoggerSettings,
    "distill": DistillSettings,
    "slurm": SlurmSettings,
}

# Settings whose targets do not check them clearly: (type, lowest, highest) with the lowest
# allowed and the highest excluded (None: unbounded).
RANGES: dict[str, tuple[Any, float | None, float | None]] = {
    "optimizer.lr": (float, 0.0, None),
    "optimizer.weight_decay": (float, 0.0, None),
    "optimizer.momentum": (float, 0.0, 1.0),
    "optimizer.eps": (float, 0.0, None),
    "lr_schedule.warmup_epochs": (float, 0.0, None),
    "lr_schedule.gamma": (float, 0.0, None),
}


# Settings checked by their hooks only once built, which for distillation is after the
# teacher trained: checked here first. (type, lowest excluded, highest included).
OPEN_RANGES: dict[str, tuple[Any, float, float | None]] = {
    "distill.temperature": (float, 0.0, None),
}
CLOSED_RANGES: dict[str, tuple[Any, float, float]] = {
    "distill.weight": (float, 0.0, 1.0),
}


def check_bounds(cfg: DictConfig) -> None:
    """``OPEN_RANGES`` (> lowest) and ``CLOSED_RANGES`` ([lowest, highest])."""
    for path, (hint, lowest, highest) in OPEN_RANGES.items():
        value = OmegaConf.select(cfg, path, default=None)
        if value is not None:
            check_value(path, value, hint)
            if value <= lowest or (highest is not None and value > highest):
                allowed = f"> {lowest:g}" + (f" and <= {highest:g}" if highest else "")
                raise ConfigError(f"{path}={value!r} is out of range: allowed values are {allowed}")
    for path, (hint, lowest, highest) in CLOSED_RANGES.items():
        value = OmegaConf.select(cfg, path, default=None)
        if value is not None:
            check_value(path, value, hint)
            if not lowest <= value <= highest:
                raise ConfigError(
                    f"{path}={value!r} is out of range: allowed values are in "
                    f"[{lowest:g}, {highest:g}]"
                )


def check_range(path: str, value: Any, lowest: float | None, highest: float | None) -> None:
    if (lowest is not None and value < lowest) or (highest is not None and value >= highest):
        allowed = f"in [{lowest:g}, {highest:g})" if highest is not None else f">= {lowest:g}"
        raise ConfigError(f"{path}={value!r} is out of range: allowed values are {allowed}")


def describe(hint: Any) -> str:
    """A type hint in words, for error messages."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    if hint in names:
        return names[hint]
    if hint is type(None):
        return "null"
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type hint (numbers are not strings, bools are not
    numbers; hints this check does not know accept anything)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, (dict, DictConfig))
    return True


def check_value(path: str, value: Any, hint: Any) -> None:
    if not matches(value, hint):
        raise ConfigError(f"{path}={value!r} has the wrong type: it must be {describe(hint)}")


def target_hints(target: Callable) -> dict[str, Any]:
    """Parameter name -> type hint of ``target`` and of the functions it forwards
    ``**kwargs`` to (``sst.config.keys.forwarded_functions``)."""
    hints: dict[str, Any] = {}
    for function in forwarded_functions(target):
        try:
            found = typing.get_type_hints(function)
        except Exception:  # hints that do not evaluate are not checked
            found = {}
        for name, hint in found.items():
            hints.setdefault(name, hint)
    return hints


def check_config(cfg: DictConfig, schemas: dict[str, type] | None = None) -> None:
    """Keys and value types of every group of a composed config (see module docstring);
    ``schemas`` maps the groups without ``_target_`` to their dataclass (default:
    ``SCHEMAS``)."""
    schemas = SCHEMAS if schemas is None else schemas
    for path in sorted(OmegaConf.missing_keys(cfg)):
        raise ConfigError(f"{path} is required and has no value: set it, e.g. {path}=<value>")
    check_keys(cfg, schemas, TOP_LEVEL)
    for group, schema in schemas.items():
        if group not in cfg:
            continue
        hints = typing.get_type_hints(schema)
        required = {
            f.name for f in fields(schema) if f.default is MISSING and f.default_factory is MISSING
        }
        node = cfg[group]
        for name in required - {str(k) for k in node}:
            raise ConfigError(f"{group}.{name} is missing")
        for key in node:
            check_value(f"{group}.{key}", OmegaConf.select(node, str(key)), hints[str(key)])
    for group in cfg:
        node = cfg[group]
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        try:
            hints = target_hints(get_object(node._target_))
        except Exception:  # an unimportable target is reported when it is instantiated
            continue
        for key in node:
            if str(key) in hints:
                check_value(f"{group}.{key}", node[key], hints[str(key)])
    for path, (hint, lowest, highest) in RANGES.items():
        value = OmegaConf.select(cfg, path, default=None)
        if value is not None:
            check_value(path, value, hint)
            check_range(path, value, lowest, highest)
    check_bounds(cfg)
