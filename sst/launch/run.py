"""One run from its composed config to its summary: finished? -> teacher first -> lock ->
build -> fit -> summary. ``sst.train`` calls ``run`` inside Hydra's job."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sst import dist
from sst.config.keys import ConfigError
from sst.data.archive import recorded_archives
from sst.engine.signals import Preempted
from sst.runs.folder import RunFolder, finished_summary
from sst.runs.identity import config_hash, identity_differences
from sst.runs.lock import RunFolderBusy, RunLock
from sst.runs.runlog import wandb_is_complete

from .build import build, check_settings, make_run_log
from .teacher import TeacherPlan, plan_teacher

log = logging.getLogger("sst")

# The numbers of a run's summary (``summary.json``) that ``optimized_metric`` may name, the
# value ``sst-train`` returns to a Hydra sweeper (Optuna): every run has these; a multi-stage
# run adds ``test_acc_<stage label>``, a distilled one ``teacher_test_acc``.
SUMMARY_METRICS = (
    "final_test_acc",
    "best_test_acc",
    "final_test_loss",
    "final_test_acc_top5",
    "sparsity_masked_layers",
    "sparsity_all_params",
    "inference_flops_rel",
    "train_flops_rel",
    "itop_rate",
    "teacher_test_acc",
    "density",
    "steps",
    "epochs",
    "wall_time_s",
)
STAGE_METRIC = "test_acc_"


def optimized_metric(cfg: DictConfig) -> str:
    """The summary number ``optimized_metric`` names (default ``final_test_acc``); an
    unknown name is a ``ConfigError`` listing the allowed ones, raised before anything runs."""
    metric = cfg.get("optimized_metric") or "final_test_acc"
    if metric in SUMMARY_METRICS or (isinstance(metric, str) and metric.startswith(STAGE_METRIC)):
        return metric
    raise ConfigError(
        f"optimized_metric={metric!r} is not a number of the run summary: allowed values are "
        f"{', '.join(SUMMARY_METRICS)} and {STAGE_METRIC}<stage label> of a multi-stage run"
    )


def optimized_value(summary: dict[str, Any], metric: str) -> float | None:
    """The summary's value of ``metric`` (what a sweeper optimises); None, with a warning
    naming the numbers this summary has, when it has no such number."""
    value = summary.get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    numbers = sorted(
        k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    log.warning(
        "optimized_metric=%s: the summary holds no such number (it has %s); the sweeper gets None",
        metric,
        ", ".join(numbers),
    )
    return None


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    choices: dict[str, str] | None = None,
    *,
    wait_if_busy: bool = False,
    overrides: list[str] | None = None,
) -> dict:
    """Trains the run of ``cfg`` in ``run_dir``: resumes from its checkpoint if any, and
    returns at once with the stored summary if the run already finished. A teacher named by
    overrides is trained first. Another process training the same folder makes this one
    fail with a message naming it, or, with ``wait_if_busy`` (a distillation teacher that
    several students need), wait for it and then find the run finished."""
    run_dir = Path(run_dir)
    check_settings(cfg)  # before a teacher trains for a student that cannot run
    optimized_metric(cfg)
    check_same_run(cfg, run_dir)
    done = finished_summary(run_dir)
    if done is None:
        teacher = plan_teacher(cfg)  # composed once for the whole run
        if teacher is not None and teacher.config is not None:
            train_teacher(teacher)
        folder = teacher.folder if teacher is not None else None
        if not dist.is_main():  # rank 0 alone holds the run folder's lock
            return train(cfg, run_dir, choices, folder, overrides)
        try:
            with RunLock(run_dir, wait=wait_if_busy):
                done = finished_summary(run_dir)  # it may have finished while this one waited
                if done is None:
                    return train(cfg, run_dir, choices, folder, overrides)
        except RunFolderBusy as busy:
            raise ConfigError(str(busy)) from None
    if dist.is_main():
        print(f"sst: run already finished, skipping: {run_dir}")
        with contextlib.suppress(RunFolderBusy), RunLock(run_dir):  # one repair at a time
            repair_wandb(cfg, run_dir, done)
    return done


def repair_wandb(cfg: DictConfig, run_dir: Path, summary: dict) -> None:
    """A finished run whose W&B logs lost their last records or the exit (a process killed
    after ``summary.json`` was written) sends them again, as a resumed run does."""
    if cfg.logger.kind != "wandb" or wandb_is_complete(run_dir):
        return
    try:
        run_log = make_run_log(cfg, run_dir, None)
        run_log.resume_at(int(summary.get("steps", 0)))
        run_log.send_summary(summary)
        run_log.finish(exit_code=0)
    except OSError as error:  # read-only storage: the run stays skipped, W&B as it was
        log.warning("the W&B run of %s could not be completed: %s", run_dir, error)


def check_same_run(cfg: DictConfig, run_dir: Path) -> None:
    """Refuses a folder that holds another run (a ``hydra.run.dir`` given by hand, reused
    with other settings): its ``config.json`` records the identity hash it was made with."""
    try:
        stored = RunFolder(run_dir).config
    except (FileNotFoundError, ValueError):
        return
    recorded = stored.get("identity_hash")
    if recorded is None or recorded == config_hash(cfg):
        return
    differences = identity_differences(stored, cfg)
    raise ConfigError(
        f"{run_dir} holds another run (identity {recorded}, this command's is "
        f"{config_hash(cfg)}); settings that differ: {'; '.join(differences) or 'unknown'}. "
        "Give this run its own folder, or repeat the folder's settings to resume it."
    )


def train_teacher(plan: TeacherPlan) -> None:
    """Trains a teacher named by overrides in its own folder, unless it finished already;
    another student training it meanwhile is waited for."""
    if finished_summary(plan.folder) is not None:
        return
    print(f"sst: training the teacher first: {' '.join(plan.overrides)}")
    plan.folder.mkdir(parents=True, exist_ok=True)
    with _log_to(plan.folder / "train.log"):
        run(plan.config, plan.folder, plan.choices, wait_if_busy=True, overrides=plan.overrides)


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


def train(
    cfg: DictConfig,
    run_dir: Path,
    choices: dict[str, str] | None,
    teacher_folder: Path | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Builds the run and fits it; the W&B run is finished however the fit ends."""
    with recorded_archives() as archives:  # the data set's archive, if it is one
        loop = build(cfg, run_dir, choices, teacher_folder=teacher_folder, overrides=overrides)
    run_log = loop.run_log
    try:
        summary = labelled_by_real_density(loop.fit())
        if archives:
            summary["data_archives"] = archives  # which archive (size, mtime) it trained on
        run_log.write_summary(summary)
    except Preempted as stop:
        log.warning("%s", stop)
        run_log.finish(exit_code=0)
        raise
    except BaseException:
        run_log.finish(exit_code=1)
        raise
    run_log.finish(exit_code=0)
    if not dist.is_main():
        return summary
    print(format_summary(summary, run_dir))
    if run_log.wandb_mode == "offline":
        print(f"  W&B (offline): wandb sync {run_dir}/wandb/offline-run-*")
    return summary


def labelled_by_real_density(summary: dict[str, Any]) -> dict[str, Any]:
    """A run whose per-layer densities are given by hand (``distribution=explicit``) does not
    use ``sparsity.density``: its summary's ``density`` is the density its masked layers
    train at (1 - ``sparsity_masked_layers``), which tables group and label it by; the
    setting is kept as ``density_setting``."""
    masked = summary.get("sparsity_masked_layers")
    if summary.get("distribution") != "explicit" or not isinstance(masked, (int, float)):
        return summary
    return {**summary, "density": round(1.0 - masked, 6), "density_setting": summary["density"]}


def format_summary(summary: dict[str, Any], run_dir: Path) -> str:
    def pct(value):
        return "n/a" if value is None else f"{value:.2f}%"

    return "\n".join(
        [
            f"sst: finished {summary.get('name')} in {summary['wall_time_s']:.1f}s "
            f"({summary['steps']} steps)",
            f"  test accuracy: final {pct(summary['final_test_acc'])}, "
            f"best {pct(summary['best_test_acc'])}",
            f"  sparsity: masked layers {100 * summary['sparsity_masked_layers']:.2f}%, "
            f"all parameters {100 * summary['sparsity_all_params']:.2f}%",
            f"  run folder: {run_dir}",
        ]
    )
