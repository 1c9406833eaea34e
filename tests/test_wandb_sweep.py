"""sst-sweep: the W&B sweep YAML of an experiment or an ad-hoc grid is valid, and the command
line an agent runs for a cell composes into that cell's config."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from runs import compose_run

from sst.runs.runlog import RunLog
from sst.study.sweep_cli import agent_overrides, main, sweep_config


def cells(config: dict) -> list[dict]:
    names = list(config["parameters"])
    grids = [config["parameters"][n]["values"] for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grids)]


def test_experiment_grid_becomes_a_valid_sweep(tmp_path: Path, capsys) -> None:
    target = tmp_path / "sweep.yaml"
    assert main(["experiment=srigl_resnet18_cifar10", "--project", "sst", "-o", str(target)]) == 0
    config = yaml.safe_load(target.read_text())
    assert config["method"] == "grid"
    assert config["metric"] == {"name": "test/acc", "goal": "maximize"}
    assert config["parameters"] == {
        "sparsity.density": {"values": [0.2, 0.1, 0.05, 0.01]},
        "seed": {"values": [0, 1, 2, 3, 4]},
    }
    command = config["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "sst.train"]
    assert command[-1] == "${args_no_hyphens}"
    assert "experiment=srigl_resnet18_cifar10" in command and "logger.mode=online" in command
    assert len(cells(config)) == 20

    cfg, run_dir, choices = compose_run(agent_overrides(config, cells(config)[-1]), tmp_path)
    assert (cfg.sparsity.density, cfg.seed, cfg.trainer.epochs) == (0.01, 4, 250)
    assert choices["experiment"] == "srigl_resnet18_cifar10"
    assert (cfg.logger.mode, cfg.logger.project) == ("online", "sst")
    _, plain_dir, _ = compose_run(
        ["experiment=srigl_resnet18_cifar10", "sparsity.density=0.01", "seed=4"], tmp_path
    )
    assert run_dir == plain_dir  # the agent's run lands in the sst-train run folder


def test_adhoc_grid_and_group_choices(tmp_path: Path) -> None:
    config = sweep_config(["sparsity=rigl,set", "seed=0,1", "trainer.epochs=5"])
    assert config["parameters"] == {
        "sparsity": {"values": ["rigl", "set"]},
        "seed": {"values": [0, 1]},
    }
    assert "trainer.epochs=5" in config["command"]
    cfg, _, choices = compose_run(agent_overrides(config, {"sparsity": "set", "seed": 1}), tmp_path)
    assert choices["sparsity"] == "set" and cfg.sparsity._target_ == "sst.sparsity.SET"
    assert (cfg.seed, cfg.trainer.epochs) == (1, 5)

    rigl = sweep_config(["experiment=rigl_wrn22_2_cifar10"])
    assert rigl["parameters"]["experiment/rigl_method@_global_"] == {"values": ["static", "rigl"]}
    overrides = agent_overrides(
        rigl, {**{k: v["values"][0] for k, v in rigl["parameters"].items()}}
    )
    cfg, _, choices = compose_run(overrides, tmp_path)
    assert choices["sparsity"] == "static" and cfg.sparsity.density == 0.5


def test_nothing_to_sweep_and_slurm_script(capsys) -> None:
    assert main(["trainer.epochs=5"]) == 2
    assert "nothing to sweep" in capsys.readouterr().err
    assert main(["--slurm-array", "4"]) == 2
    assert main(["--sweep-id", "team/sst/abc123", "--slurm-array", "4", "--partition", "gpu"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-3" in script and "#SBATCH --partition=gpu" in script
    assert script.strip().endswith("exec wandb agent team/sst/abc123")
    with pytest.raises(SystemExit):  # argparse: "0 agents: give at least 1" (was --array=0--1)
        main(["--sweep-id", "team/sst/abc123", "--slurm-array", "0"])
    assert "0 agents: give at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="allowed values"):
        sweep_config(["seed=0,1"], method="hyperband")


def test_run_joins_the_agents_wandb_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_RUN_ID", "agent123")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = RunLog(tmp_path / "run", config={"seed": 0}, kind="wandb", mode="offline")
    log.finish()
    assert log.run_id == "agent123"
    assert (tmp_path / "run" / "wandb_id.txt").read_text().strip() == "agent123"
    monkeypatch.setenv("WANDB_RUN_ID", "other999")  # a resumed run keeps its stored id
    again = RunLog(tmp_path / "run", config={"seed": 0}, kind="wandb", mode="offline")
    again.finish()
    assert again.run_id == "agent123"


def test_intervals_become_wandb_distributions() -> None:
    config = sweep_config(
        [
            "sparsity.density=interval(0.02,0.3)",
            "optimizer.lr=tag(log, interval(0.001, 0.1))",
            "trainer.epochs=tag(int, interval(2, 6))",
            "sparsity=rigl,srigl",
        ],
        method="bayes",
    )
    assert config["method"] == "bayes"
    assert config["parameters"] == {
        "sparsity.density": {"distribution": "uniform", "min": 0.02, "max": 0.3},
        "optimizer.lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1},
        "trainer.epochs": {"distribution": "int_uniform", "min": 2, "max": 6},
        "sparsity": {"values": ["rigl", "srigl"]},
    }
    assert sweep_config(["sparsity.density=interval(0.02,0.3)"], method="random")["parameters"]
    with pytest.raises(ValueError, match=r"--method grid needs lists of values.*--method random"):
        sweep_config(["sparsity.density=interval(0.02,0.3)"])
    with pytest.raises(ValueError, match="a log scale needs a start > 0"):
        sweep_config(["optimizer.lr=tag(log, interval(0, 0.1))"], method="random")


def test_an_hparams_search_becomes_the_wandb_sweeps_parameters() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install 'sst[optuna]'")
    config = sweep_config(["hparams_search=optuna"], method="bayes")
    assert config["parameters"] == {
        "optimizer.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.5},
        "sparsity.density": {"distribution": "uniform", "min": 0.05, "max": 0.3},
    }
    assert not any("hparams_search" in part for part in config["command"])  # no Optuna run


AGENT_RUN = """
import json, sys
from sst.runs.runlog import RunLog
config = {"sparsity": {"_target_": "sst.sparsity.RigL", "density": 0.1}, "seed": 1}
log = RunLog(sys.argv[1], config=config, kind="wandb", mode="offline", project="sst",
             entity="team")
print(json.dumps(dict(log.wandb_run.config)))
log.finish()
"""


def test_an_agent_run_keeps_the_groups_settings_and_warns_nothing(tmp_path: Path) -> None:
    """What ``wandb agent`` sets before it starts ``sst.train`` for a cell with
    ``sparsity=rigl``: W&B puts ``sparsity: rigl`` in the run's config; the settings of the
    group stay there as ``sparsity.*``, and the agent's run id, project and entity are not
    overridden (no "Ignoring run_id" warning)."""
    import json
    import os
    import subprocess
    import sys

    params = tmp_path / "params.yaml"
    params.write_text("sparsity:\n  value: rigl\nseed:\n  value: 1\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "wandb_id.txt").write_text("older01\n")  # an earlier attempt's id
    env = {
        **os.environ,
        "WANDB_SWEEP_ID": "sweep01",
        "WANDB_RUN_ID": "agent01",
        "WANDB_SWEEP_PARAM_PATH": str(params),
    }
    env.pop("WANDB_SILENT", None)
    done = subprocess.run(
        [sys.executable, "-c", AGENT_RUN, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout.splitlines()[-1])
    assert config["sparsity"] == "rigl"
    assert config["sparsity.density"] == 0.1
    assert config["sparsity._target_"] == "sst.sparsity.RigL"
    assert "Ignoring" not in done.stdout + done.stderr
    assert (tmp_path / "run" / "wandb_id.txt").read_text().strip() == "agent01"
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*-agent01"))
