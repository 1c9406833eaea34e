"""Hydra callbacks of ``sst-train`` (``hydra.callbacks`` in ``conf/config.yaml``).

Run folders of a sweep live in ``<output_dir>/runs/`` with those of single runs, so Hydra's
record of a sweep (``<output_dir>/runs/multirun.yaml``, and Optuna's
``optimization_results.yaml``) would be overwritten by the next sweep. ``SweepRecord`` keeps
one copy per sweep in ``<output_dir>/sweeps/<start time>/``.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

RESULTS = ("optimization_results.yaml",)  # what a sweeper writes when the sweep ends


class SweepRecord(Callback):
    """Writes the sweep's config (Hydra's ``multirun.yaml``) to
    ``<output_dir>/sweeps/<YYYY-mm-dd_HH-MM-SS_ffffff>/`` when a sweep starts, and copies
    there the sweeper's results when it ends."""

    def __init__(self) -> None:
        self.folder: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        self.folder = Path(str(config.output_dir)) / "sweeps" / stamp
        self.folder.mkdir(parents=True, exist_ok=False)
        OmegaConf.save(config, self.folder / "multirun.yaml")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.folder is None:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        for name in RESULTS:
            if (sweep_dir / name).is_file():
                shutil.copy2(sweep_dir / name, self.folder / name)
