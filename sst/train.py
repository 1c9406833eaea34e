"""``sst-train``: compose a run with Hydra, build it, fit it.

sst-train                                   # the embedded default (digits, MLP, SRigL)
sst-train model=resnet18_cifar dataset=cifar10 sparsity=rigl sparsity.density=0.05
sst-train -m experiment=srigl_resnet18_cifar10   # a paper table as a sweep
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import config as _config  # noqa: F401  (registers the run-folder resolvers)
from .build import build
from .events import Preempted
from .runs import finished_summary, run_lock
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


def run(cfg: DictConfig, run_dir: str | Path, choices: dict[str, str] | None = None) -> dict:
    """Trains the run of ``cfg`` in ``run_dir``: resumes from its checkpoint if any, and
    returns at once with the stored summary if the run already finished. A process that
    finds another one training the same folder waits for it (``sst.runs.run_lock``)."""
    run_dir = Path(run_dir)
    done = finished_summary(run_dir)
    if done is None:
        ensure_teacher(cfg)  # a teacher named by overrides is trained first
        with run_lock(run_dir):  # one process trains a folder at a time
            done = finished_summary(run_dir)  # it may have finished while this one waited
            if done is None:
                return _train(cfg, run_dir, choices)
    print(f"sst: run already finished, skipping: {run_dir}")
    return done


def _train(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None) -> dict:
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


def pass_on(signum: int | None) -> None:
    """Hands a stop signal that sst has answered (checkpoint saved) to the handler that was
    installed before sst's, if any: a job wrapper such as submitit's, whose SIGUSR2 handler
    requeues the job so that it resumes from the checkpoint (SLURM time limit, preemption).
    With no such handler the caller exits 124."""
    if signum is None:
        return
    handler = signal.getsignal(signum)
    if callable(handler):
        signal.raise_signal(signum)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    try:
        summary = run(cfg, hydra_cfg.runtime.output_dir, choices)
    except Preempted as stop:
        pass_on(stop.signum)
        sys.exit(124)
    return summary.get("final_test_acc")


if __name__ == "__main__":
    main()
