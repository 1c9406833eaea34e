"""``sst-train``: compose a run with Hydra, train it, exit with a code that says how it ended.

sst-train                                   # the embedded default (digits, MLP, SRigL)
sst-train model=resnet18_cifar dataset=cifar10 sparsity=rigl sparsity.density=0.05
sst-train -m experiment=srigl_resnet18_cifar10   # a paper table as a sweep

Exit codes: 0 trained (or already finished), 1 the run failed (a file that cannot be read or
written is named in one line, the traceback is in train.log), 2 a setting that cannot run,
124 stopped by a signal after saving its checkpoint (the launcher requeues it), 130 interrupted
by Ctrl-C (one line says which checkpoint a rerun of the same command resumes from; it is
also written to train.log, as are the summary and any exception).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from sst import __version__, dist
from sst.config import CONFIG_DIR, ConfigError, register_resolvers, runtime
from sst.config.callbacks import remove_unused_records
from sst.config.keys import check_command_line
from sst.engine.records import last_step
from sst.engine.signals import Preempted, pool_job
from sst.launch.run import format_summary, optimized_metric, optimized_value, run
from sst.runs.checkpoint import CorruptCheckpoint, previous_path
from sst.runs.folder import RunFolder, remove_if_unused

log = logging.getLogger("sst")

# The entry point registers the resolvers when it is imported: Hydra's joblib and submitit
# launchers import it in their workers, which resolve ${sst.run_folder:} before the job runs.
register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Runs one job; returns the summary's ``optimized_metric`` (default
    ``final_test_acc``) to Hydra's sweeper, for a skipped finished run too."""
    with pool_job():  # a joblib worker whose sweep died exits once no job runs in it
        return run_job(cfg)


def run_job(cfg: DictConfig) -> float | None:
    """``hydra_main``'s job: the exit codes of the module docstring."""
    dist.quiet_logging()  # a rank other than 0 writes no train.log
    run_dir = runtime.job_output_dir()
    try:
        summary = run(cfg, run_dir, runtime.job_choices())
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        message = interrupted_message(last_step(), saved_step(run_dir))
        log.info("%s", message)  # train.log (the console shows warnings only)
        if dist.is_main():
            print(message, file=sys.stderr)
        sys.exit(130)
    except Preempted as stop:
        stop.hand_over()  # e.g. submitit requeues the job, now that the checkpoint is saved
        sys.exit(124)
    except ConfigError as error:  # a setting that cannot run: its message says which
        remove_if_unused(run_dir)  # the folder Hydra made for nothing
        print(f"sst: {error}", file=sys.stderr)
        sys.exit(2)
    except (CorruptCheckpoint, OSError) as error:  # files, not code: one line, log kept
        log.info("the run stopped", exc_info=True)  # the traceback: train.log only
        print(f"sst: {error}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        log.exception("the run failed")  # train.log too, not only the console
        raise
    if last_step() is not None:  # trained here; a skipped run's folder stays untouched
        log.info("%s", format_summary(summary, Path(run_dir)))
    return optimized_value(summary, optimized_metric(cfg))  # what a sweeper (Optuna) optimises


def saved_step(run_dir: str | Path) -> int | None:
    """The step of the checkpoint a rerun resumes from: ``last.pt``, else ``prev.pt`` (None:
    neither can be read); memory-mapped, so a large checkpoint is not read whole."""
    path = RunFolder(run_dir).checkpoint_path
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True, mmap=True)
            return int(state["step"])
        except Exception:  # a checkpoint cut short: the resume says what it finds
            continue
    return None


def interrupted_message(step: int | None, saved: int | None) -> str:
    """The one line of a run stopped by Ctrl-C: where it stopped and what a rerun of the
    same command resumes from."""
    at = f"at step {step}" if step is not None else "before the first step"
    if saved is None:
        return (
            f"sst: interrupted {at}, no checkpoint saved yet; run the same command to start again"
        )
    if saved == step:
        return f"sst: interrupted {at}, checkpoint saved; run the same command to resume"
    return (
        f"sst: interrupted {at}; the checkpoint of step {saved} is kept: run the same command "
        f"to resume from step {saved}"
    )


def main() -> None:
    """``sst-train``: a misspelled setting on the command line fails with its close
    matches before Hydra composes; then Hydra runs the job (or the sweep)."""
    if "--version" in sys.argv[1:]:  # sst's version, not Hydra's
        print(f"sst {__version__}")
        return
    try:
        check_command_line(sys.argv[1:], CONFIG_DIR)
    except ConfigError as error:
        print(f"sst: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        hydra_main()
    except SystemExit as stop:
        if stop.code == 2:  # a sweep's job refused its settings: no sweep record either
            remove_unused_records()
        raise


if __name__ == "__main__":
    main()
