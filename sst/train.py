"""``sst-train``: compose a run with Hydra, train it, exit with a code that says how it ended.

sst-train                                   # the embedded default (digits, MLP, SRigL)
sst-train model=resnet18_cifar dataset=cifar10 sparsity=rigl sparsity.density=0.05
sst-train -m experiment=srigl_resnet18_cifar10   # a paper table as a sweep

Exit codes: 0 trained (or already finished), 1 the run failed (a file that cannot be read or
written is named in one line, the traceback is in train.log), 2 a setting that cannot run,
124 stopped by a signal after saving its checkpoint (the launcher requeues it).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from sst import __version__, dist
from sst.config import CONFIG_DIR, ConfigError, register_resolvers, runtime
from sst.config.keys import check_command_line
from sst.engine.signals import Preempted
from sst.launch.run import run
from sst.runs.checkpoint import CorruptCheckpoint
from sst.runs.folder import remove_if_unused

log = logging.getLogger("sst")

# The entry point registers the resolvers when it is imported: Hydra's joblib and submitit
# launchers import it in their workers, which resolve ${sst.run_folder:} before the job runs.
register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    dist.quiet_logging()  # a rank other than 0 writes no train.log
    try:
        summary = run(cfg, runtime.job_output_dir(), runtime.job_choices())
    except Preempted as stop:
        stop.hand_over()  # e.g. submitit requeues the job, now that the checkpoint is saved
        sys.exit(124)
    except ConfigError as error:  # a setting that cannot run: its message says which
        remove_if_unused(runtime.job_output_dir())  # the folder Hydra made for nothing
        print(f"sst: {error}", file=sys.stderr)
        sys.exit(2)
    except (CorruptCheckpoint, OSError) as error:  # files, not code: one line, log kept
        log.exception("the run stopped")  # the traceback goes to train.log
        print(f"sst: {error}", file=sys.stderr)
        sys.exit(1)
    return summary.get("final_test_acc")


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
    hydra_main()


if __name__ == "__main__":
    main()
