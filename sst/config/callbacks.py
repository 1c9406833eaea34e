"""Hydra callbacks of ``sst-train`` (``hydra.callbacks`` in ``conf/config.yaml``).

Run folders of a sweep live in ``<output_dir>/runs/`` with those of single runs, so Hydra's
record of a sweep (``<output_dir>/runs/multirun.yaml``, and Optuna's
``optimization_results.yaml``) would be overwritten by the next sweep. ``SweepRecord`` keeps
one copy per sweep in ``<output_dir>/sweeps/<start time>/``.
"""

from __future__ import annotations

import contextlib
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

RESULTS = ("optimization_results.yaml",)  # what a sweeper writes when the sweep ends
# (record folder, sweep dir, what the sweep dir held before) of the sweeps started here
_made: list[tuple[Path, Path, set[str]]] = []


class SweepRecord(Callback):
    """Writes the sweep's config (Hydra's ``multirun.yaml``) to
    ``<output_dir>/sweeps/<YYYY-mm-dd_HH-MM-SS_ffffff>/`` when a sweep starts, and copies
    there the sweeper's results when it ends."""

    def __init__(self) -> None:
        self.folder: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        self.folder = Path(str(config.output_dir)) / "sweeps" / stamp
        sweep_dir = Path(str(config.hydra.sweep.dir))
        before = {p.name for p in sweep_dir.iterdir()} if sweep_dir.is_dir() else set()
        self.folder.mkdir(parents=True, exist_ok=False)
        OmegaConf.save(config, self.folder / "multirun.yaml")
        _made.append((self.folder, sweep_dir, before | {"multirun.yaml"}))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.folder is None:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        for name in RESULTS:
            if (sweep_dir / name).is_file():
                shutil.copy2(sweep_dir / name, self.folder / name)


def remove_unused_records() -> None:
    """Removes what the sweeps started in this process wrote before their jobs ran (the
    record folder, Hydra's ``multirun.yaml``, and the folders made for them when nothing
    else is in them), unless a job made a run folder: for a sweep whose first job was
    refused (a setting that cannot run)."""
    while _made:
        folder, sweep_dir, before = _made.pop()
        if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} - before:
            continue  # a job of this sweep made its run folder: the record stays
        for path in (folder / "multirun.yaml", sweep_dir / "multirun.yaml"):
            path.unlink(missing_ok=True)
        for empty in (folder, folder.parent, sweep_dir, folder.parent.parent):
            with contextlib.suppress(OSError):
                empty.rmdir()  # only when empty
