"""Runs -> results: find runs, group them, aggregate over seeds.

The run folders are the source of truth (``sst.runs.RunFolder``); finished W&B runs can be
read instead with ``wandb_runs`` when the machine is online. A run enters an aggregate only
when it finished: unfinished, crashed and empty runs are returned apart (``Collection.
problems``) so that a table can say what is missing instead of averaging it in silently.

Grouping keys are the run's identity in a table: ``dataset``, ``model``, ``method`` (the
sparsity option), ``sparsity`` (1 - density), ``distill`` (the distillation option) by
default, plus any dotted path into ``config.json`` the user names (``sparsity.gamma_sal``,
``trainer.epochs``). Within a group the runs are the seeds: the mean and the sample standard
deviation (n - 1 in the denominator; undefined for one seed) of the accuracy are reported
with the seed count, beside the mean training and inference FLOPs relative to dense (the
RigL paper's accounting, ``summary.json`` keys ``train_flops_rel``/``inference_flops_rel``).
A group whose runs differ in a setting other than the seed is flagged with the settings
that differ (``Group.mixed``): add them to the grouping keys to split it.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sst.command_line import parse_assignments
from sst.runs.folder import CHECKPOINT, CONFIG_FILE, FINISHED, LOG_FILE, SUMMARY_FILE, RunFolder
from sst.runs.identity import identity_settings as run_identity

DEFAULT_RUNS = "outputs/runs"
DEFAULT_KEYS = ("dataset", "model", "method", "sparsity", "distill")
METRICS = {"final": "final_test_acc", "best": "best_test_acc"}
FLOPS = ("train_flops_rel", "inference_flops_rel")
# keys with a meaning of their own (anything else is a dotted path into config.json); these
# name a config group's option: key -> the group
CHOICE_GROUPS = {"dataset": "dataset", "model": "model", "method": "sparsity", "distill": "distill"}


@dataclass
class Run:
    """One run as a table sees it: where it is, its status, resolved config and summary."""

    source: str
    status: str
    config: dict[str, Any]
    summary: dict[str, Any] | None = None
    last_step: int | None = None

    @property
    def finished(self) -> bool:
        return self.status == FINISHED and self.summary is not None

    def value(self, key: str) -> Any:
        """The run's value of a grouping or matching key (see module docstring); None if the
        run's config does not have it."""
        summary = self.summary or {}
        choices = self.config.get("choices") or {}
        if key in CHOICE_GROUPS:
            value = choices.get(CHOICE_GROUPS[key])
            if value is None and key != "distill":
                value = summary.get(key)
            if key == "distill" and value is None:
                enabled = lookup(self.config, "distill.enabled")
                value = "none" if not enabled else "kd"
            return value
        if key == "density":  # an explicit distribution's run: the density it trained at
            if lookup(self.config, "sparsity.distribution") == "explicit" and summary:
                return summary.get("density")
            return lookup(self.config, "sparsity.density", summary.get("density"))
        if key == "sparsity":
            density = self.value("density")
            return None if density is None else round(1.0 - float(density), 10)
        if key in ("distribution", "structure"):
            return lookup(self.config, f"sparsity.{key}", summary.get(key))
        if key in ("seed", "experiment"):
            return self.config.get(key, summary.get(key))
        return lookup(self.config, key)


def lookup(tree: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; ``default`` where a part is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


# ----------------------------------------------------------------------------- collecting
def is_run_folder(path: Path) -> bool:
    """A folder sst-train wrote into: config, summary, checkpoint, or the ``train.log`` a
    job leaves even when it crashed before training."""
    return any((path / name).exists() for name in (CONFIG_FILE, SUMMARY_FILE, CHECKPOINT, LOG_FILE))


def find_run_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders among ``paths``: each path is a run folder or a folder holding run
    folders at any depth (a sweep directory such as ``outputs/runs``). A path that does
    not exist raises."""
    found: list[Path] = []
    for start in map(Path, paths):
        if not start.is_dir():
            raise FileNotFoundError(f"{start} is not a folder: give run folders or sweep folders")
        if is_run_folder(start):
            found.append(start)
            continue
        for root, dirs, _ in os.walk(start):
            dirs.sort()
            for name in list(dirs):
                child = Path(root) / name
                if name.startswith(".") or name == "wandb":
                    dirs.remove(name)
                elif is_run_folder(child):
                    found.append(child)
                    dirs.remove(name)
    return sorted(dict.fromkeys(found))


def read_run(path: str | Path) -> Run:
    """A run folder as a ``Run`` (an empty or unreadable config reads as ``{}``; an
    unreadable summary makes the run's status say so, naming the file)."""
    folder = RunFolder(path)
    try:
        config = folder.config
    except (FileNotFoundError, ValueError):
        config = {}
    try:
        status, summary = folder.status, folder.summary
    except ValueError as error:  # listed under the table with the file named
        status, summary = f"unreadable ({error})", None
    last_step = None
    if summary is None:
        steps = [r["step"] for r in folder.metrics() if isinstance(r.get("step"), int)]
        last_step = max(steps) if steps else None
    return Run(str(folder.path), status, config, summary, last_step)


@dataclass
class Collection:
    """Finished runs, and the runs that are not (unfinished, crashed, empty)."""

    runs: list[Run]
    problems: list[Run]


def collect(paths: Iterable[str | Path]) -> Collection:
    """Every run under ``paths`` (see ``find_run_folders``), finished ones apart."""
    runs = [read_run(p) for p in find_run_folders(paths)]
    return Collection([r for r in runs if r.finished], [r for r in runs if not r.finished])


def wandb_runs(path: str, *, api: Any = None, filters: dict[str, Any] | None = None) -> Collection:
    """The runs of the W&B project ``path`` (``entity/project``), read through the W&B
    public API (needs network and ``wandb login``). sst logs the resolved config (with
    ``choices``) as the W&B config and the summary's scalars as the W&B summary, so a W&B
    run reads like its folder; the per-layer table is not uploaded."""
    if api is None:
        import wandb

        api = wandb.Api()
    runs = []
    for remote in api.runs(path, filters=filters or {}):
        summary = dict(remote.summary)
        config = {k: v for k, v in dict(remote.config).items() if not k.startswith("_")}
        done = remote.state == "finished" and bool(summary.get("finished"))
        status = FINISHED if done else str(remote.state)
        source = f"wandb:{path}/{remote.id}"
        runs.append(Run(source, status, config, summary if done else None, summary.get("_step")))
    return Collection([r for r in runs if r.finished], [r for r in runs if not r.finished])


def parse_where(pairs: Sequence[str]) -> dict[str, Any]:
    """``["dataset=digits", "sparsity.gamma_sal=0"]`` -> ``{"dataset": "digits",
    "sparsity.gamma_sal": 0}`` (values read as YAML scalars)."""
    return parse_assignments(pairs, "--where", "dataset=digits")


def same_value(actual: Any, wanted: Any) -> bool:
    """Config value equality, numbers compared as numbers (``0`` matches ``0.0``)."""
    if isinstance(wanted, list):
        return any(same_value(actual, w) for w in wanted)
    numbers = (int, float)
    if isinstance(actual, numbers) and isinstance(wanted, numbers):
        if isinstance(actual, bool) or isinstance(wanted, bool):
            return actual is wanted
        return math.isclose(float(actual), float(wanted), rel_tol=1e-9, abs_tol=1e-9)
    return actual == wanted


def select(runs: Sequence[Run], where: dict[str, Any]) -> list[Run]:
    """The runs whose value of every key of ``where`` equals the given one (numbers compared
    as numbers: ``0`` matches ``0.0``)."""
    return [r for r in runs if all(same_value(r.value(k), v) for k, v in where.items())]


def gather(
    paths: Sequence[str | Path] = (), *, wandb: str | None = None, where: Sequence[str] = ()
) -> Collection:
    """The runs of a study: under the run folders ``paths`` and/or in the W&B project
    ``wandb``, keeping those whose settings match every ``KEY=VALUE`` of ``where``
    (unfinished runs are kept when their config matches or is unknown)."""
    criteria = parse_where(where)  # a malformed --where fails before any folder is read
    if wandb:
        found = wandb_runs(wandb)
        if paths:
            local = collect(paths)
            found = Collection(found.runs + local.runs, found.problems + local.problems)
    else:
        found = collect(paths or [DEFAULT_RUNS])
    if not criteria:
        return found
    problems = [r for r in found.problems if not r.config or select([r], criteria)]
    return Collection(select(found.runs, criteria), problems)


# ----------------------------------------------------------------------------- aggregating
@dataclass
class Stat:
    """Mean and sample standard deviation of ``n`` values (``std`` None for one value)."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not values:
            return cls(None, None, 0)
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class Group:
    """The runs that share one value of every grouping key, aggregated."""

    key: dict[str, Any]
    runs: list[Run]
    accuracy: Stat
    train_flops: Stat
    inference_flops: Stat
    seeds: list[Any] = field(default_factory=list)
    mixed: list[str] = field(default_factory=list)


def not_finished_records(problems: Iterable[Run]) -> list[dict[str, Any]]:
    """The JSON rows that list the runs a table left out: folder, status, last step."""
    return [{"run": r.source, "status": r.status, "last_step": r.last_step} for r in problems]


def identity_settings(run: Run) -> dict[str, str]:
    """Dotted path -> value (as text) of the settings that make up a run's identity, the
    seed left out, by the rules of its folder's hash (``sst.runs.identity``): settings that
    do not change results, later-added settings at their neutral value and moved code's
    targets count as they do there."""
    return {path: repr(value) for path, value in run_identity(run.config).items()}


def mixed_settings(runs: Sequence[Run]) -> list[str]:
    """The identity settings (besides the seed) whose values differ among ``runs``; two runs
    with the same seed also count as a difference (``seed``)."""
    if len(runs) < 2:
        return []
    tables = [identity_settings(r) for r in runs]
    paths = set().union(*tables)
    differ = sorted(p for p in paths if len({t.get(p) for t in tables}) > 1)
    seeds = [r.value("seed") for r in runs]
    if len(set(map(repr, seeds))) < len(seeds):
        differ.append("seed (repeated)")
    return differ


def sort_key(value: Any) -> tuple:
    """Orders numbers by value before text, and None last."""
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def aggregate(
    runs: Sequence[Run], keys: Sequence[str] = DEFAULT_KEYS, *, metric: str = "final"
) -> list[Group]:
    """Groups finished ``runs`` by ``keys`` and aggregates each group over its seeds;
    ``metric`` is ``final`` (accuracy at the end of training) or ``best`` (the best test
    accuracy seen during training)."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown: allowed values are {sorted(METRICS)}")
    buckets: dict[tuple, list[Run]] = {}
    for run in runs:
        if not run.finished:
            raise ValueError(f"{run.source} is {run.status}: only finished runs are aggregated")
        buckets.setdefault(tuple(repr(run.value(k)) for k in keys), []).append(run)
    groups = []
    for members in buckets.values():
        summaries = [m.summary or {} for m in members]
        groups.append(
            Group(
                key={k: members[0].value(k) for k in keys},
                runs=members,
                accuracy=Stat.of([s.get(METRICS[metric]) for s in summaries]),
                train_flops=Stat.of([s.get("train_flops_rel") for s in summaries]),
                inference_flops=Stat.of([s.get("inference_flops_rel") for s in summaries]),
                seeds=sorted((m.value("seed") for m in members), key=sort_key),
                mixed=mixed_settings(members),
            )
        )
    return sorted(groups, key=lambda g: tuple(sort_key(g.key[k]) for k in keys))
