"""``hparams_search=optuna``: a Hydra Optuna sweep over the default run, each trial an sst
run that returns the summary's ``optimized_metric`` to the sweeper, a relaunch skipping the
finished trials and returning their recorded values, and each sweep's record kept."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install 'sst[optuna]'")
pytestmark = pytest.mark.slow  # two sweeps of three runs in subprocesses: 40 s to 2 min

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "hparams_search=optuna",
    "hydra.sweeper.n_trials=3",
    "trainer.epochs=1",
    "trainer.batch_size=256",
    "trainer.progress_bar=false",
    "logger=none",
]


def optuna_sweep(output_dir: Path, *extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    command = [sys.executable, "-m", "sst.train", "-m", *TINY, *extra, f"output_dir={output_dir}"]
    done = subprocess.run(
        command, cwd=output_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def summaries(output_dir: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text())
        for p in (output_dir / "runs").glob("*/summary.json")
    }


def results(sweep: Path) -> dict:
    return yaml.safe_load((sweep / "optimization_results.yaml").read_text())


def test_three_trials_return_the_optimized_metric_and_a_relaunch_the_recorded_one(tmp_path):
    out = optuna_sweep(tmp_path)
    runs = summaries(tmp_path)
    assert len(runs) == 3, out
    (first,) = sorted((tmp_path / "sweeps").iterdir())
    best = results(first)
    assert best["best_value"] == max(s["final_test_acc"] for s in runs.values())
    for folder, summary in runs.items():  # the draws' long decimals are rounded in the name
        assert re.fullmatch(r"digits-mlp-srigl-d0\.\d{1,4}-s0-[0-9a-f]{8}", folder), folder
        assert 0.05 <= summary["density"] <= 0.3

    # the same sampler seed draws the same trials: each is skipped and returns its recorded
    # value of the metric now asked for
    out = optuna_sweep(tmp_path, "optimized_metric=wall_time_s")
    assert out.count("run already finished, skipping") == 3, out
    assert summaries(tmp_path) == runs
    sweeps = sorted((tmp_path / "sweeps").iterdir())
    assert len(sweeps) == 2 and all((s / "multirun.yaml").is_file() for s in sweeps)
    assert results(sweeps[1])["best_value"] == max(s["wall_time_s"] for s in runs.values())
    assert yaml.safe_load((sweeps[1] / "multirun.yaml").read_text())["optimized_metric"] == (
        "wall_time_s"
    )
    assert results(sweeps[0]) == best  # the first sweep's record is not overwritten
