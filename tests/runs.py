"""Helpers for tests that compose and run whole training runs."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import sst.launch.run as run_module
from sst.config import CONFIG_DIR, register_resolvers
from sst.engine.hooks import Hook
from sst.launch.build import build

CONF = CONFIG_DIR
register_resolvers()  # what sst-train does before Hydra composes
QUICK = [
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "sparsity.delta_t=10",
    "trainer.progress_bar=false",
    "trainer.log_every=10",
]


@contextmanager
def hydra_conf_single_thread() -> Iterator[None]:
    """Hydra initialised on ``conf/``, torch on one intra-op thread: config tests build tiny
    models, and on a busy 2-core machine torch's thread pool makes them take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            yield
    finally:
        torch.set_num_threads(threads)


def compose_with_hydra(overrides: Sequence[str] = ()) -> DictConfig:
    """The config of ``sst-train <overrides>`` with its ``hydra`` node, inside
    ``hydra_conf_single_thread``; ``${hydra:...}`` resolves."""
    cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def job_config(cfg: DictConfig) -> dict:
    """The job's config (everything but ``hydra``) resolved, failing on any ``???``."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return OmegaConf.to_container(job, resolve=True, throw_on_missing=True)


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


def long_train_command(output_dir: Path, progress_bar: bool) -> list[str]:
    """``python -m sst.train`` on digits for 100 epochs (a run the tests stop long before
    its end), with W&B off."""
    return [
        sys.executable,
        "-m",
        "sst.train",
        f"output_dir={output_dir}",
        "logger=none",
        "trainer.batch_size=32",
        "trainer.epochs=100",
        f"trainer.progress_bar={str(progress_bar).lower()}",
    ]


def read_metrics(run_dir: Path, drop=("update/time_ms",)) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


class InterruptAt(Hook):
    """Interrupts the run after the ``step``-th optimizer step of this launch: sends
    ``signum`` to this process (SIGTERM, as SLURM does) or, with ``how="crash"``, raises."""

    name = "interrupt"

    def __init__(self, step: int, how: str = "signal", signum: int = signal.SIGTERM) -> None:
        self.step, self.how, self.signum, self.seen = step, how, signum, 0

    def after_optimizer_step(self) -> None:
        self.seen += 1
        if self.seen == self.step:
            if self.how == "crash":
                raise RuntimeError("simulated crash")
            os.kill(os.getpid(), self.signum)


def run_with(monkeypatch, cfg: DictConfig, run_dir: Path, choices: dict, hooks=()) -> dict:
    """``sst.launch.run.run`` with ``hooks`` appended to the loop that ``build`` returns."""

    def build_with_hooks(*args, **kwargs):
        loop = build(*args, **kwargs)
        loop.hooks.extend(hooks)
        return loop

    monkeypatch.setattr(run_module, "build", build_with_hooks)
    return run_module.run(cfg, run_dir, choices)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not; Linux)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")
