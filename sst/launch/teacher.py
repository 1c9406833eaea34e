"""The distillation teacher as a run of its own: found by its identity, trained if missing.

``distill.teacher_run`` is either the folder of a finished run, or a list of overrides that
turn the student's command into the teacher's (``[sparsity=dense]``: the same model, data,
recipe and seed, trained dense). The teacher's config is the student's command line (the
job's Hydra overrides) with those overrides applied on top, ``distill=none``, and every
student override of a key the teacher sets left out (``sparsity=dense`` drops the
student's ``sparsity=...`` and ``sparsity.*``). Its folder follows from its identity like
any run's (``sst.runs.identity``), so every student of a sweep finds the same teacher:
``-m distill=none,kd sparsity=rigl,gmp`` trains the dense teacher once, with the first
student that needs it, and the others find it finished. Concurrent students (a SLURM array,
the joblib launcher) wait on the folder's lock for the one that trains it
(``sst.runs.lock.RunLock``).

The teacher is planned once per run (``plan_teacher``): ``sst.launch.run`` trains it when it
is missing, and ``sst.launch.build`` loads it from the plan's folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, open_dict

from sst.config import runtime
from sst.config.keys import ConfigError


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


@dataclass
class TeacherPlan:
    """A student's teacher: its run folder and, when the student names it by overrides, the
    composed config that trains it there."""

    folder: Path
    config: DictConfig | None = None
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


def compose_teacher(overrides: list[str]) -> TeacherPlan:
    """The teacher run of the command line ``overrides``, its ``name`` and ``group``
    resolved under its own group choices."""
    try:
        teacher = runtime.compose(overrides)
        with runtime.as_job(teacher):  # ${hydra:...} in name and group: the teacher's
            run_dir = Path(str(teacher.hydra.run.dir))
            choices = runtime.choices_of(teacher.hydra)
            with open_dict(teacher):
                del teacher["hydra"]
                for key in ("name", "group"):
                    if key in teacher:
                        teacher[key] = teacher[key]
    except ConfigError:
        raise
    except Exception as error:  # a composition error names the bad override
        raise ConfigError(f"distill.teacher_run: the teacher does not compose: {error}") from error
    return TeacherPlan(folder=run_dir, config=teacher, choices=choices, overrides=overrides)


def plan_teacher(cfg: DictConfig) -> TeacherPlan | None:
    """The student's teacher (None without distillation): a folder given as such, or the
    run its overrides compose to (composed here, once per run)."""
    if not cfg.distill.enabled:
        return None
    spec = cfg.distill.get("teacher_run")
    if spec is None:
        raise ConfigError("distill.teacher_run is missing: a run folder or a list of overrides")
    if isinstance(spec, str):
        return TeacherPlan(folder=Path(spec))
    student = runtime.job_overrides()
    if student is None:
        raise ConfigError(
            "distill.teacher_run as a list of overrides needs a run composed by Hydra "
            "(sst-train, or sst.config.runtime.compose); give the teacher's run folder instead"
        )
    return compose_teacher(teacher_overrides(student, check_teacher_overrides(spec)))
