"""Helpers for tests that compose and run whole training runs."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import sst.config  # noqa: F401  (registers the run-folder resolver)

CONF = str(Path(__file__).resolve().parent.parent / "conf")
QUICK = [
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "sparsity.delta_t=10",
    "trainer.progress_bar=false",
    "trainer.log_every=10",
]


def compose_run(overrides: list[str], output_dir: Path):
    """(config, run folder, group choices), as ``sst-train`` would see them."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "config", overrides=[*overrides, f"output_dir={output_dir}"], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    run_dir = Path(cfg.hydra.run.dir)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, run_dir, choices


def read_metrics(run_dir: Path, drop=("update/time_ms",)) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]
