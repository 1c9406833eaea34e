"""The one reader of Hydra's runtime state (``HydraConfig``) and the one place that composes
a config outside ``@hydra.main``.

Inside ``sst-train`` Hydra holds the job's config, its group choices, the command line's
overrides and its output folder; a config composed from Python (tests, the distillation
teacher, ``sst-sweep``) goes through ``compose`` here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .directory import CONFIG_DIR
from .resolvers import register_resolvers


def running() -> bool:
    """Whether a Hydra job (or a composed config set as the job's) is current."""
    return HydraConfig.initialized()


def is_multirun() -> bool:
    """Whether the current job is one of a sweep (``sst-train -m``)."""
    if not HydraConfig.initialized():
        return False
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> list[str] | None:
    """The current job's command-line overrides (``overrides.task``); None outside a job."""
    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def job_choices() -> dict[str, str]:
    """The current job's group choices, Hydra's own groups left out."""
    return choices_of(HydraConfig.get())


def job_output_dir() -> str:
    """The current job's output folder: the run folder."""
    return HydraConfig.get().runtime.output_dir


def choices_of(hydra_node: DictConfig) -> dict[str, str]:
    """The group choices recorded in a ``hydra`` node, Hydra's own groups left out."""
    return {
        str(k): str(v)
        for k, v in hydra_node.runtime.choices.items()
        if not str(k).startswith("hydra")
    }


@contextlib.contextmanager
def initialised(config_dir: str = CONFIG_DIR) -> Iterator[None]:
    """Hydra initialised on sst's configs, unless it already is (inside ``@hydra.main``)."""
    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        yield


def compose(overrides: Sequence[str] = (), *, with_hydra: bool = True) -> DictConfig:
    """The config of ``sst-train <overrides>`` (with its ``hydra`` node by default)."""
    with initialised():
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=with_hydra)


@contextlib.contextmanager
def as_job(cfg: DictConfig) -> Iterator[None]:
    """Makes the composed ``cfg`` (with its ``hydra`` node) the current job's config, so
    that ``${hydra:...}`` resolves in it, and restores the previous one after."""
    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(cfg)
    try:
        yield
    finally:
        instance.cfg = saved
