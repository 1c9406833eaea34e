"""One run, one folder: ``metrics.jsonl``, ``summary.json`` and the W&B run.

``metrics.jsonl`` and ``summary.json`` are written whatever the logger is; W&B is the
dashboard, these files are the record that tables are built from.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import string
import subprocess
from pathlib import Path
from typing import Any

from sst.files import write_json_atomic, write_text_atomic
from sst.runs.identity import flatten

from .folder import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE
from .jsonl import read_jsonl
from .wandb_file import read_history, read_run

LOGGER_KINDS = ("wandb", "none")
WANDB_MODES = ("online", "offline", "disabled")


def git_commit() -> str | None:
    """The commit of the sst checkout, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def new_run_id() -> str:
    """8 random lowercase letters and digits, the shape of W&B's own run ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# W&B's legacy spellings of WANDB_MODE
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}


def effective_mode(mode: str | None) -> str:
    """The W&B mode a run gets: ``logger.mode`` when set, else ``WANDB_MODE`` (and
    ``WANDB_DISABLED=true`` means disabled), else ``offline``."""
    if mode is not None:
        return mode
    if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    env = _MODE_ALIASES.get(env, env) or "offline"
    if env not in WANDB_MODES:
        raise ValueError(
            f"WANDB_MODE={os.environ['WANDB_MODE']!r} is unknown: allowed values are "
            f"{WANDB_MODES} (or unset it; logger.mode overrides it)"
        )
    return env


def wandb_init_args(
    mode: str | None,
    project: str | None,
    tags: list[str] | None,
    job_type: str | None,
    default_tags: list[str],
) -> dict[str, Any]:
    """``wandb.init`` keywords for the logger settings: an explicit setting wins, an unset
    one (None) is left out when its W&B environment variable is set, so that the variable
    applies, and otherwise takes sst's default (offline, project ``sst``, job type
    ``train``, ``default_tags``)."""
    env = os.environ
    args: dict[str, Any] = {"mode": effective_mode(mode)}
    if project is not None or "WANDB_PROJECT" not in env:
        args["project"] = project if project is not None else "sst"
    if tags is not None or "WANDB_TAGS" not in env:
        args["tags"] = list(tags) if tags is not None else list(default_tags)
    if job_type is not None or "WANDB_JOB_TYPE" not in env:
        args["job_type"] = job_type if job_type is not None else "train"
    return args


def in_wandb_sweep() -> bool:
    """Whether a W&B sweep agent started this process (it sets ``WANDB_SWEEP_ID``): W&B
    then takes the run's id, project and entity from the agent and ignores those given to
    ``wandb.init``, with an "Ignoring run_id" warning for each."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def restore_group_settings(run: Any, config: dict[str, Any]) -> dict[str, Any]:
    """A sweep parameter that chooses a config group (``sparsity=rigl``) makes the W&B
    run's config ``sparsity: rigl`` (sweep values replace the run's own at the top level):
    the group's settings are added back as dotted keys (``sparsity.density``), which W&B
    filters and groups by as it does nested ones. Returns what was added."""
    added: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and not isinstance(run.config.get(key), dict):
            added.update(flatten(value, key))
    if added:
        run.config.update(added, allow_val_change=True)
    return added


class RunLog:
    """Writes a run's metrics to ``metrics.jsonl`` and, with ``kind="wandb"``, to W&B.

    Args:
        run_dir: the run's folder.
        config: the resolved config as a plain dict: written to ``config.json`` and sent to
            W&B as its config (None: neither, for a run that only repairs its W&B run).
        kind: ``wandb`` or ``none``.
        mode, project, tags, job_type: W&B's; None (not set) leaves W&B's environment
            variables (``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_TAGS``,
            ``WANDB_JOB_TYPE``) in charge, and where those are unset too the run is
            ``offline`` in project ``sst`` with job type ``train`` and ``default_tags``
            (see ``wandb_init_args``).
        run_id: the W&B run id to attach to (resume); None takes a W&B sweep agent's
            ``WANDB_RUN_ID``, else the one stored in the run folder, else a new one, and
            stores it.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: dict[str, Any] | None,
        kind: str = "wandb",
        mode: str | None = None,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
        default_tags: list[str] | None = None,
        run_id: str | None = None,
    ) -> None:
        if kind not in LOGGER_KINDS:
            raise ValueError(f"logger.kind={kind!r} is unknown: allowed values are {LOGGER_KINDS}")
        if mode is not None and mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={mode!r} is unknown: allowed values are {WANDB_MODES}")
        self.wandb_mode = effective_mode(mode) if kind == "wandb" else "disabled"
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self.summary_path = self.run_dir / SUMMARY_FILE
        if config is not None:  # None: attach to a finished run's W&B run to repair it
            write_json_atomic(self.run_dir / CONFIG_FILE, config)
        self.wandb_run = None
        settings = wandb_init_args(mode, project, tags, job_type, default_tags or [])
        self.run_id = run_id
        if self.wandb_mode != "disabled":
            self.run_id = self._stored_run_id()
            self.wandb_run = self._init_wandb(config, entity, name, group, settings)

    def _stored_run_id(self) -> str:
        """The run's W&B id: the given one, else a sweep agent's ``WANDB_RUN_ID`` (W&B
        gives the agent's run no other id), else the run folder's, else ``WANDB_RUN_ID``,
        else a new one; written to ``wandb_id.txt``."""
        id_file = self.run_dir / "wandb_id.txt"
        run_id = self.run_id
        if run_id is None and in_wandb_sweep() and os.environ.get("WANDB_RUN_ID"):
            run_id = os.environ["WANDB_RUN_ID"]  # the agent's run: W&B uses no other id
        if run_id is None and id_file.exists():
            run_id = id_file.read_text().strip() or None  # empty: a write cut short (old)
        if run_id is None:  # a W&B sweep agent names the run it started for us
            run_id = os.environ.get("WANDB_RUN_ID") or None
        if run_id is None:
            run_id = new_run_id()
        write_text_atomic(id_file, run_id + "\n")
        return run_id

    def _init_wandb(
        self,
        config: dict[str, Any] | None,
        entity: str | None,
        name: str | None,
        group: str | None,
        settings: dict[str, Any],
    ) -> Any:
        """Starts (or resumes) the W&B run in the run folder; under a sweep agent the
        agent's id, project and entity (``in_wandb_sweep``), and the settings of a group
        the sweep chooses kept (``restore_group_settings``)."""
        import wandb

        where = {"entity": entity, "id": self.run_id, **settings}
        if in_wandb_sweep():
            where = {k: v for k, v in where.items() if k not in ("entity", "id", "project")}
        run = wandb.init(
            name=name,
            group=group,
            resume="allow",
            dir=str(self.run_dir),
            config=config,
            settings=wandb.Settings(quiet=True),
            **where,
        )
        if config is not None and in_wandb_sweep():
            restore_group_settings(run, config)
        return run

    def truncate_after(self, step: int) -> None:
        """Drops records past ``step``: a resumed run re-logs them, so the file reads as if
        the run had never stopped."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in read_jsonl(self.metrics_path) if r["step"] <= step]
        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def resume_at(self, step: int) -> int:
        """Brings the records of a resumed run to ``step``: ``metrics.jsonl`` loses what
        came after it (the run logs those steps again), and W&B gets again the records up
        to ``step`` that an earlier session of the run logged to ``metrics.jsonl`` but never
        to W&B (a hard kill loses the steps since W&B's last flush). Returns how many
        records were sent again."""
        self.truncate_after(step)
        if self.wandb_run is None:
            return 0
        logged = self.wandb_steps()
        last = max(logged) if logged else -1
        missing = [r for r in read_jsonl(self.metrics_path) if last < r["step"] <= step]
        for record in missing:
            metrics = {k: v for k, v in record.items() if k not in ("step", "epoch")}
            self.wandb_run.log({**metrics, "epoch": record["epoch"]}, step=record["step"])
        return len(missing)

    def wandb_steps(self) -> set[int]:
        """History steps that earlier sessions of this run wrote to their local W&B logs
        (``wandb/*/run-<id>.wandb``, offline and online runs alike)."""
        current = Path(self.wandb_run.dir).parent if self.wandb_run is not None else None
        steps: set[int] = set()
        for path in sorted(self.run_dir.glob(f"wandb/*/run-{self.run_id}.wandb")):
            if current is not None and path.parent == current:
                continue
            for row in read_history(path):
                if "_step" in row:
                    steps.add(int(row["_step"]))
        return steps

    def log(self, metrics: dict[str, float], *, step: int, epoch: float) -> None:
        record = {"step": step, "epoch": epoch, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({**metrics, "epoch": epoch}, step=step)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, summary)
        self.send_summary(summary)

    def send_summary(self, summary: dict[str, Any]) -> None:
        """The summary's scalars as the W&B run's summary."""
        if self.wandb_run is not None:
            for key, value in summary.items():
                if isinstance(value, (int, float, str, bool)):
                    self.wandb_run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        """Closes the W&B run; safe to call more than once."""
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


def wandb_is_complete(run_dir: str | Path) -> bool:
    """Whether the run's local W&B logs (``wandb/*/run-<id>.wandb``) hold every step of
    ``metrics.jsonl`` and the run's exit: a process killed after ``summary.json`` was
    written leaves them short."""
    run_dir = Path(run_dir)
    id_file = run_dir / "wandb_id.txt"
    if not id_file.exists():
        return True  # the run never logged to W&B
    run_id = id_file.read_text().strip()
    steps: set[int] = set()
    exited = False
    for path in sorted(run_dir.glob(f"wandb/*/run-{run_id}.wandb")):
        found = read_run(path)
        steps |= {int(row["_step"]) for row in found["history"] if "_step" in row}
        exited = exited or found["exit_code"] is not None
    recorded = {int(r["step"]) for r in read_jsonl(run_dir / METRICS_FILE)}
    return exited and recorded <= steps


class SilentRunLog:
    """The run log of a rank other than 0 in a multi-process run: rank 0 alone writes the
    run folder and logs to W&B, the others record nothing."""

    run_id: str | None = None
    wandb_mode = "disabled"

    def truncate_after(self, step: int) -> None:
        pass

    def log(self, metrics: dict[str, float], *, step: int, epoch: float) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass
