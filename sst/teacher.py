"""The distillation teacher as a run of its own: found by its identity, trained if missing.

``distill.teacher_run`` is either the folder of a finished run, or a list of overrides that
turn the student's command into the teacher's (``[sparsity=dense]``: the same model, data,
recipe and seed, trained dense). The teacher's config is the student's command line (the
job's Hydra overrides) with those overrides applied on top, ``distill=none``, and every
student override of a key the teacher sets left out (``sparsity=dense`` drops the
student's ``sparsity=...`` and ``sparsity.*``). Its folder follows from its identity like
any run's (``sst.identity``), so every student of a sweep finds the same teacher:
``-m distill=none,kd sparsity=rigl,gmp`` trains the dense teacher once, with the first
student that needs it, and the others find it finished. Concurrent students (a SLURM array,
the joblib launcher) wait on the folder's lock for the one that trains it
(``sst.runlock.RunLock``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from .config import ConfigError
from .runs import finished_summary

log = logging.getLogger("sst")


def override_key(override: str) -> str:
    """The key (or group) an override sets: ``+sparsity.alpha=1`` -> ``sparsity.alpha``."""
    return override.split("=", 1)[0].lstrip("+~")


def _covers(key: str, other: str) -> bool:
    return other == key or other.startswith(key + ".") or other.startswith(key + "/")


def check_teacher_overrides(overrides: Any) -> list[str]:
    """``distill.teacher_run`` as a list of ``key=value`` strings, none touching
    ``distill`` (a teacher is trained without distillation)."""
    if not isinstance(overrides, (list, tuple, ListConfig)):
        raise ConfigError(
            f"distill.teacher_run={overrides!r} must be a run folder or a list of overrides "
            "such as [sparsity=dense]"
        )
    out = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(
                f"distill.teacher_run: {item!r} is not an override (key=value), e.g. "
                "[sparsity=dense]"
            )
        if _covers("distill", override_key(item)):
            raise ConfigError(
                f"distill.teacher_run: {item!r} sets distillation for the teacher; a teacher "
                "is trained with distill=none"
            )
        out.append(item)
    return out


def teacher_overrides(student: Sequence[str], teacher: Sequence[str]) -> list[str]:
    """The teacher's command line: the student's overrides without distillation and
    without the keys the teacher sets (a group also takes its keys), then ``distill=none``
    and the teacher's overrides."""
    replaced = ["distill", *(override_key(o) for o in teacher)]
    kept = [o for o in student if not any(_covers(k, override_key(o)) for k in replaced)]
    return [*kept, "distill=none", *teacher]


def student_overrides() -> list[str]:
    """The running job's command-line overrides (Hydra's ``overrides.task``)."""
    if not HydraConfig.initialized():
        raise ConfigError(
            "distill.teacher_run as a list of overrides needs a run composed by Hydra "
            "(sst-train, or tests' compose_run); give the teacher's run folder instead"
        )
    return list(HydraConfig.get().overrides.task)


@contextlib.contextmanager
def _hydra_initialised() -> Iterator[None]:
    if GlobalHydra.instance().is_initialized():  # inside sst-train's @hydra.main
        yield
        return
    from .train import config_dir  # sst.train imports this module

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield


def compose_teacher(cfg: DictConfig) -> tuple[DictConfig, Path, dict[str, str], list[str]]:
    """(teacher config, its run folder, its group choices, its overrides) for a student
    whose ``distill.teacher_run`` is a list of overrides."""
    overrides = teacher_overrides(
        student_overrides(), check_teacher_overrides(cfg.distill.teacher_run)
    )
    saved = HydraConfig.instance().cfg
    try:
        with _hydra_initialised():
            teacher = compose("config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(teacher)  # ${hydra:...} in name/group: the teacher's
        run_dir = Path(str(teacher.hydra.run.dir))
        choices = {
            str(k): str(v)
            for k, v in teacher.hydra.runtime.choices.items()
            if not str(k).startswith("hydra")
        }
        with open_dict(teacher):
            del teacher["hydra"]
            for key in ("name", "group"):
                if key in teacher:
                    teacher[key] = teacher[key]  # resolved now, under the teacher's choices
    except ConfigError:
        raise
    except Exception as error:  # a composition error names the bad override
        raise ConfigError(f"distill.teacher_run: the teacher does not compose: {error}") from error
    finally:
        HydraConfig.instance().cfg = saved
    return teacher, run_dir, choices, overrides


def teacher_folder(cfg: DictConfig) -> Path:
    """The folder of the student's teacher run (trained or not)."""
    spec = cfg.distill.get("teacher_run")
    if spec is None:
        raise ConfigError("distill.teacher_run is missing: a run folder or a list of overrides")
    if isinstance(spec, str):
        return Path(spec)
    return compose_teacher(cfg)[1]


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def ensure_teacher(cfg: DictConfig) -> Path | None:
    """The teacher's folder, trained first (in this process) when the student names it by
    overrides and it has not finished; None without distillation."""
    if not cfg.distill.enabled:
        return None
    spec = cfg.distill.get("teacher_run")
    if spec is None or isinstance(spec, str):
        return teacher_folder(cfg)
    from .train import run  # sst.train imports this module

    teacher, run_dir, choices, overrides = compose_teacher(cfg)
    if finished_summary(run_dir) is None:
        print(f"sst: training the teacher first: {' '.join(overrides)}")
        hydra_dir = run_dir / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(teacher, hydra_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
        with _log_to(run_dir / "train.log"):
            run(teacher, run_dir, choices, wait_if_busy=True)  # another may be training it
    return run_dir
