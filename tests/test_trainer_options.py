"""Loop options on small real runs: each keeps the masks exact and reaches the end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import QUICK, compose_run

from sst.launch.run import run

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "options",
    [
        ["trainer.amp=bf16"],
        ["trainer.grad_accumulation=4", "trainer.label_smoothing=0.1", "trainer.grad_clip=1.0"],
        [
            "optimizer=adamw",
            "optimizer.lr=0.003",
            "lr_schedule=cosine",
            "lr_schedule.warmup_epochs=1",
        ],
        ["sparsity=rigl", "sparsity.structure=nm", "sparsity.density=0.5", "trainer.max_steps=40"],
        ["sparsity=set", "sparsity.distribution=uniform", "sparsity.dense_last=true"],
        ["sparsity=static", "sparsity.sparse_init=true"],
        ["sparsity=dense", "model=resnet20", "trainer.epochs=1", "trainer.channels_last=true"],
    ],
)
def test_option_combination_trains(tmp_path, options):
    static = any(o in options for o in ("sparsity=static", "sparsity=dense"))
    base = [o for o in QUICK if not (static and o.startswith("sparsity.delta_t"))]
    cfg, run_dir, choices = compose_run([*base, "logger=none", *options], tmp_path)
    summary = run(cfg, run_dir, choices)
    assert summary["finished"]
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert state["step"] == summary["steps"]
    masks = state["sparsity"]["masks"]
    for name, mask in masks.items():
        weight = state["model"][f"{name}.weight"]
        assert torch.all(weight[~mask] == 0), name
    if "trainer.max_steps=40" in options:
        assert summary["steps"] == 40
    if masks:
        assert summary["sparsity_masked_layers"] > 0.45


def test_lr_follows_the_schedule_in_the_records(tmp_path):
    cfg, run_dir, choices = compose_run(
        [*QUICK, "logger=none", "lr_schedule.step_size_epochs=1", "trainer.log_every=1"], tmp_path
    )
    run(cfg, run_dir, choices)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["train/lr"] for r in records if "train/lr" in r}
    # 22 steps per epoch; lr 0.1 x 0.2 per epoch; the lr of step s is set before it runs
    assert lrs[1] == pytest.approx(0.1)
    assert lrs[22] == pytest.approx(0.1)
    assert lrs[23] == pytest.approx(0.02)
    assert lrs[45] == pytest.approx(0.004)


def sst_train(*args: str) -> str:
    """stdout of ``python -m sst.train <args>``."""
    return subprocess.run(
        [sys.executable, "-m", "sst.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


@pytest.mark.slow
def test_cli_help_and_cfg_show_the_options():
    help_text = sst_train("--help")
    assert help_text.startswith("sst-train: train a sparse neural network")
    for group in ("sparsity:", "model:", "dataset:", "experiment:", "launcher:"):
        assert group in help_text
    options = (
        "asp_2to4, dense, fine_tuning, gmp, lr_rewinding, oneshot, rigl, set, srigl, static, "
        "targeted_dropout"
    )
    assert f"sparsity: {options}" in help_text
    assert "_target_: sst.sparsity.RigL" in sst_train("--cfg", "job", "sparsity=rigl")
