"""Whole runs: the default command, resume, W&B offline records, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import wandb
from runs import QUICK, InterruptAt, compose_run, long_train_command, read_metrics, run_with

import sst.launch.run as run_module
from sst.config.keys import ConfigError
from sst.engine.hooks import Hook
from sst.engine.signals import Preempted
from sst.engine.step import NonFiniteLoss
from sst.launch.build import build
from sst.runs.wandb_file import read_run

ROOT = Path(__file__).resolve().parent.parent


def test_default_command_trains_digits_and_skips_when_finished(tmp_path):
    env = {**os.environ, "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "sst.train", f"output_dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy: final" in done.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("digits-mlp-srigl-d0.1-s0-")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_test_acc"] > 85.0  # chance is 10%
    assert summary["sparsity_masked_layers"] == pytest.approx(0.9, abs=0.01)
    assert summary["steps"] == 250 * (1437 // 128)
    assert {row["layer"] for row in summary["layers"]} == {"1", "3", "5"}
    for name in ("config.json", "metrics.jsonl", "checkpoints/last.pt", "wandb_id.txt"):
        assert (run_dir / name).exists(), name
    assert (run_dir / ".lock").read_text() == ""  # released
    assert "test accuracy: final" in (run_dir / "train.log").read_text()  # the summary too
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert state["step"] == summary["steps"]
    assert set(state["sparsity"]["masks"]) == {"1", "3", "5"}
    before = folder_snapshot(run_dir)
    # settings outside the identity find the same run: it is skipped, its folder untouched
    again = subprocess.run(
        [*cmd, "logger=none"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0
    assert "run already finished, skipping" in again.stdout
    assert folder_snapshot(run_dir) == before


def folder_snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def final_state(run_dir):
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    return state["model"], state["sparsity"]["masks"], state["optimizer"]


def test_resume_after_signal_and_after_crash_matches_uninterrupted(tmp_path, monkeypatch):
    overrides = [*QUICK, "logger=none", "trainer.deterministic=true"]
    cfg, run_dir, choices = compose_run(overrides, tmp_path / "a")
    run_with(monkeypatch, cfg, run_dir, choices)
    reference = final_state(run_dir)
    reference_metrics = read_metrics(run_dir)

    cfg, run_dir, choices = compose_run(overrides, tmp_path / "b")
    with pytest.raises(Preempted):
        run_with(monkeypatch, cfg, run_dir, choices, [InterruptAt(15, "signal")])  # mid-epoch 1
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["step"] == 15
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with(monkeypatch, cfg, run_dir, choices, [InterruptAt(20, "crash")])  # step 35
    # the crash at step 35 left the end-of-epoch-2 checkpoint (step 44) in place? No: epoch 2
    # ends at step 44, after the crash, so the step-22 checkpoint of epoch 1 is the last one
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["step"] == 22
    summary = run_with(monkeypatch, cfg, run_dir, choices)
    assert summary["steps"] == 66

    resumed = final_state(run_dir)
    for key, value in reference[0].items():
        assert torch.equal(value, resumed[0][key]), key
    for key, value in reference[1].items():
        assert torch.equal(value, resumed[1][key]), key
    assert read_metrics(run_dir) == reference_metrics


def test_wandb_offline_run_is_read_back(tmp_path):
    cfg, run_dir, choices = compose_run([*QUICK, "logger=wandb"], tmp_path)
    summary = run_module.run(cfg, run_dir, choices)
    wandb.teardown()  # finish() returns before W&B's service has written every record
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    run = read_run(wandb_file)
    assert wandb_file.name == f"run-{(run_dir / 'wandb_id.txt').read_text().strip()}.wandb"
    config = run["config"]
    assert config["sparsity"]["_target_"] == "sst.sparsity.SRigL"
    assert config["sparsity"]["density"] == 0.1
    assert config["choices"]["model"] == "mlp"
    assert config["name"] == "digits-mlp-srigl-d0.1-s0"
    history = {row["_step"]: row for row in run["history"]}
    records = read_metrics(run_dir, drop=())
    for record in records:
        logged = history[record["step"]]
        for key, value in record.items():
            if key != "step":
                assert logged[key] == pytest.approx(value), key
    assert run["summary"]["best_test_acc"] == pytest.approx(summary["best_test_acc"])
    assert run["exit_code"] == 0
    assert any("train/loss" in r for r in records) and any("test/acc" in r for r in records)


def test_resume_attaches_to_the_same_wandb_run(tmp_path, monkeypatch):
    cfg, run_dir, choices = compose_run([*QUICK, "logger=wandb"], tmp_path)
    with pytest.raises(Preempted):
        run_with(monkeypatch, cfg, run_dir, choices, [InterruptAt(30, "signal")])
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["wandb_id"] == run_id
    run_with(monkeypatch, cfg, run_dir, choices)
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "sparsity.density=1.5",
            r"sparsity: density=1.5 is out of range: allowed values are in \(0, 1\]",
        ),
        ("sparsity.gamma_sal=-1", r"sparsity: gamma_sal=-1"),
        ("sparsity.distribution=erx", r"sparsity: distribution='erx' is unknown: allowed values"),
        ("sparsity.densities={layer9: 0.5}", r"densities: 'layer9' matches no layer"),
        ("trainer.amp=fp8", r"trainer.amp='fp8' is unknown: allowed values are \('none', 'bf16'"),
        ("trainer.device=tpu", r"trainer.device='tpu' is unknown: allowed values"),
        ("trainer.epochs=0", r"trainer.epochs=0 must be >= 1"),
        ("logger.mode=sometimes", r"logger.mode='sometimes' is unknown: allowed values"),
        ("optimizer.lr=-1", r"optimizer.lr=-1 is out of range: allowed values are >= 0"),
        ("model.hidden=[0]", r"model: hidden=\[0\]: every hidden width must be >= 1"),
    ],
)
def test_bad_config_fails_before_the_first_step(tmp_path, override, message):
    overrides = [*QUICK, "logger=none"]
    cfg, run_dir, choices = compose_run([*overrides, override], tmp_path)
    with pytest.raises(ConfigError, match=message):
        build(cfg, run_dir, choices)
    assert not (run_dir / "checkpoints").exists()


def test_missing_dataset_root_names_the_setting(tmp_path):
    cfg, run_dir, choices = compose_run(
        ["dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}", "logger=none"], tmp_path
    )
    with pytest.raises(ConfigError, match=r"dataset: .*dataset\.root"):
        build(cfg, run_dir, choices)


class PoisonAt(Hook):
    name = "poison"

    def __init__(self, step, model):
        self.step, self.model, self.seen = step, model, 0

    def after_optimizer_step(self):
        self.seen += 1
        if self.seen == self.step:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg, run_dir, choices = compose_run([*QUICK, "logger=none"], tmp_path)
    loop = build(cfg, run_dir, choices)
    loop.hooks.append(PoisonAt(30, loop.model))
    with pytest.raises(NonFiniteLoss, match="NaN/inf"):
        loop.fit()
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert state["step"] == 22  # end of epoch 1; never overwritten with NaN weights
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert (run_dir / "metrics.jsonl").exists()


def test_a_crash_still_finishes_the_wandb_run_and_keeps_the_logs(tmp_path, monkeypatch):
    cfg, run_dir, choices = compose_run([*QUICK, "logger=wandb"], tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with(monkeypatch, cfg, run_dir, choices, [InterruptAt(30, "crash")])
    wandb.teardown()
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert read_run(wandb_file)["exit_code"] == 1
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["step"] == 22
    assert any("test/acc" in row for row in read_metrics(run_dir))


@pytest.mark.slow
def test_sigusr1_to_a_real_process_checkpoints_and_the_relaunch_resumes(tmp_path):
    """What SLURM does before preemption: the process saves, exits 124; the relaunch of the
    same command resumes from the saved step and finishes."""
    cmd = long_train_command(tmp_path, progress_bar=False)
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("runs/*/metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR1)
    assert process.wait(timeout=120) == 124
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["step"]
    assert 0 < saved < 4400
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at step {saved} " in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 4400
