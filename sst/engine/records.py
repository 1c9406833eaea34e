"""What a run records: train records and evaluations (``metrics.jsonl`` and W&B through the
run log), the best and last test metrics, one row per finished stage of a multi-stage run,
and the progress bar. Rank 0 alone writes; every rank keeps the same numbers.

The best test accuracy counts only evaluations of the network at its final sparsity (the
masked-layer sparsity of the last evaluation, within ``SPARSITY_TOLERANCE``): GMP before its
last prune, LR rewinding's dense stage, targeted dropout before its prune and one-shot
before its prune evaluate a denser network, whose accuracy is not the sparse network's.

The progress bar is drawn only on a terminal: with stderr redirected (a log file, a
launcher's job) each evaluation prints one line instead. ``last_step`` is the step the
process last reached, for the one-line message of an interrupted run (``sst.train``)."""

from __future__ import annotations

import logging
import math
import multiprocessing
import sys
from typing import Any

from tqdm import tqdm

from sst import dist
from sst.runs.runlog import RunLog, SilentRunLog

log = logging.getLogger("sst.engine")

SPARSITY_KEY = "sparsity/masked_layers"  # the sparsity hook's metric at each evaluation
SPARSITY_TOLERANCE = 5e-4

_last_step: int | None = None  # the step this process's run last reached


def last_step() -> int | None:
    """The step the current process's run last reached (None before its first step)."""
    return _last_step


def _reached(step: int) -> None:
    global _last_step
    _last_step = step


class Records:
    """``run_log`` receives the records (None: nothing is written)."""

    def __init__(self, run_log: RunLog | SilentRunLog | None, progress_bar: bool) -> None:
        self.run_log = run_log
        self.progress_bar = progress_bar
        # best test accuracy per masked-layer sparsity ("%.4f"; "" when no sparsity metric)
        self.best_at: dict[str, float] = {}
        self.last_sparsity: float | None = None
        self.last_eval: dict[str, float] = {}
        self.stage_results: list[dict[str, Any]] = []
        self._progress: tqdm | None = None
        self._postfix: dict[str, str] = {}
        self._lines = False  # one line per evaluation instead of the bar (no terminal)
        self._step = 0
        self._epochs = 0
        self._resumed_at: int | None = None

    # ----------------------------------------------------------------- writing
    def log(self, metrics: dict[str, float], *, step: int, epoch: float) -> None:
        if self.run_log is not None and dist.is_main():
            self.run_log.log(metrics, step=step, epoch=round(epoch, 4))

    def train(self, record: dict[str, float], *, step: int, epoch: float) -> None:
        """A train record (``train/loss``, ``train/lr`` and the hooks' metrics)."""
        self._postfix["loss"] = f"{record['train/loss']:.4f}"
        self._postfix["lr"] = f"{record['train/lr']:.3g}"
        if self._progress is not None:
            self._progress.set_postfix(self._postfix, refresh=False)
        self.log(record, step=step, epoch=epoch)

    def evaluation(
        self, metrics: dict[str, float], extra: dict[str, float], *, step: int, epoch: float
    ) -> None:
        """Test ``metrics`` now, logged with ``extra`` (stage, the hooks' metrics)."""
        self.last_eval = dict(metrics)
        sparsity = extra.get(SPARSITY_KEY)
        self.last_sparsity = None if sparsity is None else float(sparsity)
        key = "" if sparsity is None else f"{sparsity:.4f}"
        self.best_at[key] = max(self.best_at.get(key, -math.inf), metrics["test/acc"])
        self.log({**metrics, "test/best_acc": self.best_acc, **extra}, step=step, epoch=epoch)
        self._postfix["test_acc"] = f"{metrics['test/acc']:.2f}"
        if self._progress is not None:
            self._progress.set_postfix(self._postfix)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        log.info("epoch %d step %d: %s", math.floor(epoch), step, shown)
        if self._lines:
            loss = f", loss={self._postfix['loss']}" if "loss" in self._postfix else ""
            print(
                f"epoch {math.floor(epoch)}/{self._epochs} step {step}: {shown}{loss}", flush=True
            )

    def stage_end(self, index: int, label: str | None, step: int, masked: float | None) -> None:
        """The row of a finished stage, from the evaluation just recorded."""
        row: dict[str, Any] = {
            "stage": index,
            "step": step,
            "test_acc": self.last_eval["test/acc"],
            "sparsity_masked_layers": masked,
        }
        if label:
            row["label"] = label
        self.stage_results.append(row)

    # ----------------------------------------------------------------- progress bar
    def open_progress(self, total: int, initial: int) -> None:
        """The bar over ``total`` steps from ``initial`` (a resumed run's step): on a
        terminal only (tqdm's ``disable=None``); without one, and in a worker of a process
        pool (the joblib launcher, whose jobs share one terminal), a line per evaluation."""
        wanted = self.progress_bar and dist.is_main()
        in_pool = multiprocessing.parent_process() is not None
        self._progress = tqdm(
            total=total,
            initial=initial,
            unit="step",
            dynamic_ncols=True,
            disable=None if wanted and not in_pool else True,
        )
        self._lines = wanted and self._progress.disable
        self._step = initial
        _reached(initial)
        self._resumed_at = initial if initial > 0 else None

    def advance(self) -> None:
        self._step += 1
        _reached(self._step)
        if self._progress is not None:
            self._progress.update()

    def describe_epoch(self, epoch: int, total_epochs: int) -> None:
        """The epoch now starting (0-based); a resumed run says where it resumes."""
        self._epochs = total_epochs
        if self._resumed_at is not None:
            self.say(
                f"sst: resuming from step {self._resumed_at}, epoch {epoch + 1}/{total_epochs}"
            )
            self._resumed_at = None
        if self._progress is not None:
            self._progress.set_description(f"epoch {epoch + 1}/{total_epochs}")

    def say(self, message: str) -> None:
        """A line on the console (rank 0), above the progress bar, and in ``train.log``."""
        log.info("%s", message)
        if dist.is_main():
            tqdm.write(message, file=sys.stdout)

    def close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # ----------------------------------------------------------------- results
    @property
    def best_acc(self) -> float:
        """The best test accuracy at the last evaluation's sparsity or sparser (-inf: no
        evaluation yet)."""
        final = self.last_sparsity
        return max(
            (
                acc
                for key, acc in self.best_at.items()
                if not key or final is None or float(key) >= final - SPARSITY_TOLERANCE
            ),
            default=-math.inf,
        )

    def results(self, multi_stage: bool) -> dict[str, Any]:
        """The summary's accuracy fields (and per-stage rows of a multi-stage run)."""
        out: dict[str, Any] = {
            "final_test_acc": self.last_eval.get("test/acc"),
            "best_test_acc": self.best_acc if math.isfinite(self.best_acc) else None,
            "final_test_loss": self.last_eval.get("test/loss"),
        }
        if "test/acc_top5" in self.last_eval:
            out["final_test_acc_top5"] = self.last_eval["test/acc_top5"]
        if multi_stage:
            out["stages"] = list(self.stage_results)
            for row in self.stage_results:
                if row.get("label"):
                    out[f"test_acc_{row['label']}"] = row["test_acc"]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_at": dict(self.best_at),
            "last_sparsity": self.last_sparsity,
            "last_eval": dict(self.last_eval),
            "stage_results": list(self.stage_results),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "best_at" in state:
            self.best_at = dict(state["best_at"])
            self.last_sparsity = state["last_sparsity"]
        else:  # a checkpoint from before the best was kept per sparsity
            best = state["best_acc"]
            self.best_at = {"": best} if math.isfinite(best) else {}
        self.last_eval = dict(state["last_eval"])
        self.stage_results = list(state["stage_results"])
