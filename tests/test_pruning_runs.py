"""A short real run of every sparsity method on the default data (digits, MLP): the run
folder, the final sparsity and what each pruning method adds to the summary."""

import re
from pathlib import Path

import pytest
import torch
from runs import QUICK, InterruptAt, compose_run, read_metrics, run_with

import sst.launch.run as run_module
from sst.engine.signals import Preempted
from sst.launch.run import run
from sst.runs.load import load_run

COMMON = [o for o in QUICK if not o.startswith("sparsity.")] + ["trainer.epochs=2", "logger=none"]
STEPS = 2 * (1437 // 64)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models


@pytest.mark.parametrize(
    ("method", "extra", "stages", "density"),
    [
        ("dense", [], 1, 1.0),
        ("static", [], 1, 0.1),
        ("set", ["sparsity.delta_t=5"], 1, 0.1),
        ("rigl", ["sparsity.delta_t=5"], 1, 0.1),
        ("srigl", ["sparsity.delta_t=5"], 1, 0.1),
        ("gmp", ["sparsity.delta_t=5"], 1, 0.1),
        ("oneshot", [], 1, 0.1),
        ("targeted_dropout", [], 2, 0.1),
        ("lr_rewinding", ["sparsity.density=0.64"], 3, 0.64),
        ("asp_2to4", [], 2, 0.5),
        ("fine_tuning", ["sparsity.density=0.64"], 3, 0.64),
    ],
)
def test_a_short_run_on_digits(tmp_path, method, extra, stages, density):
    cfg, run_dir, choices = compose_run([*COMMON, f"sparsity={method}", *extra], tmp_path)
    summary = run(cfg, run_dir, choices)
    assert summary["method"] == method
    assert summary["sparsity_masked_layers"] == pytest.approx(1 - density, abs=0.01)  # SRigL: 90.3
    assert summary["final_test_acc"] > 30.0  # chance is 10%
    steps = STEPS * (stages if method in ("lr_rewinding", "asp_2to4", "fine_tuning") else 1)
    assert summary["steps"] == steps
    if stages > 1:
        assert [row["stage"] for row in summary["stages"]] == list(range(stages))
        assert summary["stages"][-1]["test_acc"] == summary["final_test_acc"]
    # the best accuracy is the sparse network's: evaluations at the final sparsity only
    evaluations = [r for r in read_metrics(run_dir) if "test/acc" in r]
    final = evaluations[-1]["sparsity/masked_layers"]
    at_final = [r["test/acc"] for r in evaluations if r["sparsity/masked_layers"] >= final - 5e-4]
    assert summary["best_test_acc"] == max(at_final)
    loaded = load_run(run_dir)
    for name, mask in loaded.masks.items():
        weight = dict(loaded.model.named_modules())[name].weight
        assert torch.all(weight[~mask] == 0)
        if method == "asp_2to4":
            groups = mask.reshape(mask.shape[0], -1, 4).sum(dim=-1)
            assert torch.all(groups == 2), name


def test_targeted_dropout_reports_accuracy_before_and_after_the_prune(tmp_path):
    cfg, run_dir, choices = compose_run([*COMMON, "sparsity=targeted_dropout"], tmp_path)
    summary = run(cfg, run_dir, choices)
    before, after = summary["stages"]
    assert (before["stage"], before["label"], before["step"]) == (0, "before_prune", STEPS)
    assert before["sparsity_masked_layers"] == 0.0  # trained dense, candidates dropped
    assert (after["stage"], after["step"]) == (1, STEPS)
    assert after["sparsity_masked_layers"] == pytest.approx(0.9, abs=0.01)
    assert summary["test_acc_before_prune"] == before["test_acc"]
    assert summary["final_test_acc"] == after["test_acc"]
    assert summary["best_test_acc"] == after["test_acc"]  # not the dense network's
    evaluations = [r for r in read_metrics(run_dir) if "test/acc" in r and r["step"] == STEPS]
    assert [r["stage"] for r in evaluations] == [0, 1]
    assert [r["test/acc"] for r in evaluations] == [before["test_acc"], after["test_acc"]]
    # a relaunch finds it finished; the final stage ran once
    again = run(cfg, run_dir, choices)
    assert again["stages"] == summary["stages"]


def test_a_kill_at_the_last_step_resumes_into_the_final_prune(tmp_path, monkeypatch):
    overrides = [*COMMON, "sparsity=targeted_dropout", "trainer.deterministic=true"]
    cfg, run_dir, choices = compose_run(overrides, tmp_path / "a")
    reference = run(cfg, run_dir, choices)

    cfg, run_dir, choices = compose_run(overrides, tmp_path / "b")
    hooks = [InterruptAt(STEPS)]

    with pytest.raises(Preempted):
        run_with(monkeypatch, cfg, run_dir, choices, hooks)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (state["step"], state["stage_started"]) == (STEPS, 0)  # trained, not yet pruned
    hooks.clear()
    resumed = run_module.run(cfg, run_dir, choices)
    assert resumed["stages"] == reference["stages"]
    assert resumed["test_acc_before_prune"] == reference["test_acc_before_prune"]


def test_readme_pruning_examples_run(capsys):
    """The README's library examples of the pruning methods run as written."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Pruning methods and distillation", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0::2] == ["GMP", "OneShot", "TargetedDropout"]
    assert [float(v) for v in printed[1::2]] == pytest.approx([0.9, 0.9, 0.9], abs=0.01)
    exec(compile(blocks[1], "README.md", "exec"), {})
    rounds = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert [int(r[0]) for r in rounds] == [0, 1, 2, 3, 4]
    assert [float(r[1]) for r in rounds] == pytest.approx([0, 0.2, 0.36, 0.488, 0.5], abs=1e-3)
