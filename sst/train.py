"""``sst-train``: compose a run with Hydra, build it, fit it.

sst-train                                   # the embedded default (digits, MLP, SRigL)
sst-train model=resnet18_cifar dataset=cifar10 sparsity=rigl sparsity.density=0.05
sst-train -m experiment=srigl_resnet18_cifar10   # a paper table as a sweep
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import dist
from .build import build
from .config import ConfigError, check_command_line
from .events import Preempted
from .runlock import RunFolderBusy, RunLock
from .runs import finished_summary
from .teacher import ensure_teacher

log = logging.getLogger("sst")


def config_dir() -> str:
    """The configs: ``sst/conf`` inside an installed wheel (package data built from the
    checkout's ``conf/``), else the checkout's ``conf/`` (source tree, editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"sst's configs are missing: no config.yaml in {package}/conf")


CONFIG_DIR = config_dir()


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    choices: dict[str, str] | None = None,
    *,
    wait_if_busy: bool = False,
) -> dict:
    """Trains the run of ``cfg`` in ``run_dir``: resumes from its checkpoint if any, and
    returns at once with the stored summary if the run already finished. Another process
    training the same folder makes this one fail with a message naming it, or, with
    ``wait_if_busy`` (a distillation teacher that several students need), wait for it and
    then find the run finished."""
    run_dir = Path(run_dir)
    done = finished_summary(run_dir)
    if done is None:
        ensure_teacher(cfg)  # a teacher named by overrides is trained first
        if not dist.is_main():  # rank 0 alone holds the run folder's lock
            return train(cfg, run_dir, choices)
        try:
            with RunLock(run_dir, wait=wait_if_busy):
                done = finished_summary(run_dir)  # it may have finished while this one waited
                if done is None:
                    return train(cfg, run_dir, choices)
        except RunFolderBusy as busy:
            raise ConfigError(str(busy)) from None
    if dist.is_main():
        print(f"sst: run already finished, skipping: {run_dir}")
    return done


def train(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None) -> dict:
    """Builds the run and fits it; the W&B run is finished however the fit ends."""
    loop = build(cfg, run_dir, choices)
    run_log = loop.run_log
    try:
        summary = loop.fit()
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    dist.quiet_logging()  # a rank other than 0 writes no train.log
    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    try:
        summary = run(cfg, hydra_cfg.runtime.output_dir, choices)
    except Preempted as stop:
        stop.hand_over()  # e.g. submitit requeues the job, now that the checkpoint is saved
        sys.exit(124)
    except ConfigError as error:  # a setting that cannot run: its message says which
        print(f"sst: {error}", file=sys.stderr)
        sys.exit(2)
    return summary.get("final_test_acc")


def main() -> None:
    """``sst-train``: a misspelled setting on the command line fails with its close
    matches before Hydra composes; then Hydra runs the job (or the sweep)."""
    try:
        check_command_line(sys.argv[1:], CONFIG_DIR)
    except ConfigError as error:
        print(f"sst: {error}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


if __name__ == "__main__":
    main()
