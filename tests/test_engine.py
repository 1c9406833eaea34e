"""The sparsity engine's seams: policies apart from masks, forward-time masks, training
stages, and run folders that describe themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TinyConvNet, batches
from runs import QUICK, InterruptAt, compose_run, read_metrics, run_with

import sst.launch.run as run_module
from sst.engine.signals import Preempted
from sst.launch.build import build
from sst.runs import RunFolder
from sst.runs.load import load_run
from sst.sparsity import Static
from sst.sparsity.method import SparsityMethod, magnitude_masks
from sst.sparsity.stages import replayed_stages, stage_at

POLICIES = Path(__file__).resolve().parent / "policies"


@pytest.fixture
def policies_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(POLICIES))


def test_a_policy_from_outside_sst_runs_end_to_end(tmp_path, policies_on_path):
    overrides = [
        *[o for o in QUICK if not o.startswith("sparsity.")],
        "logger=none",
        f"hydra.searchpath=[file://{POLICIES / 'conf'}]",
        "sparsity=top_magnitude",
    ]
    cfg, run_dir, choices = compose_run(overrides, tmp_path)
    loop = build(cfg, run_dir, choices)
    method = loop.hooks[0].method
    initial = {n: w.detach().abs().clone() for n, w in method.weights.items()}
    masks = {n: m.bool().clone() for n, m in method.masks.items()}
    for name, mask in masks.items():  # every kept weight is at least as large as any dropped
        assert initial[name][mask].min() >= initial[name][~mask].max(), name
    summary = loop.fit()
    assert summary["finished"] and summary["method"] == "top_magnitude"
    assert all(torch.equal(masks[n], m.bool()) for n, m in method.masks.items())
    assert summary["sparsity_masked_layers"] == pytest.approx(0.8, abs=0.01)


def test_global_magnitude_keeps_the_largest_weights_under_one_threshold(tiny_net):
    method = Static(tiny_net, density=0.3, distribution="global_magnitude")
    kept = torch.cat(
        [
            w.detach()[m.bool()].abs()
            for w, m in zip(method.weights.values(), method.masks.values(), strict=True)
        ]
    )
    assert kept.numel() == pytest.approx(
        0.3 * sum(w.numel() for w in method.weights.values()), abs=len(method.weights)
    )
    # weights were multiplied by the mask: the dropped ones are 0 now, so compare with a copy
    torch.manual_seed(0)
    fresh = TinyConvNet()
    all_weights = torch.cat(
        [fresh.get_parameter(f"{n}.weight").detach().abs().flatten() for n in method.weights]
    )
    threshold = torch.topk(all_weights, kept.numel()).values[-1]
    assert kept.min() >= threshold


def test_magnitude_masks_follow_the_structure():
    weight = torch.tensor([[4.0, -3.0, 0.1, 0.2], [0.5, 0.4, -9.0, 0.3]])
    from sst.sparsity.structure import Structure

    fan_in = magnitude_masks({"w": weight}, {"w": 0.5}, Structure("constant_fanin"))["w"]
    assert fan_in.int().tolist() == [[1, 1, 0, 0], [1, 0, 1, 0]]
    unstructured = magnitude_masks({"w": weight}, {"w": 0.5}, Structure("unstructured"))["w"]
    assert unstructured.int().tolist() == [[1, 1, 0, 0], [1, 0, 1, 0]]
    nm = magnitude_masks({"w": weight}, {"w": 0.5}, Structure("nm", 1, 2))["w"]
    assert nm.int().tolist() == [[1, 0, 0, 1], [1, 0, 1, 0]]


class DropHalf(SparsityMethod):
    """Forward-time mask: every weight of a layer zeroed with probability 1/2 per pass."""

    def forward_mask(self, name, weight):
        return (torch.rand(weight.shape, generator=self.generator) < 0.5).to(weight.dtype)


def test_a_forward_mask_never_touches_the_stored_weights(tiny_net):
    optimizer = torch.optim.SGD(tiny_net.parameters(), lr=0.0)
    method = DropHalf(tiny_net, optimizer, density=0.5)
    before = {n: w.detach().clone() for n, w in method.weights.items()}
    inputs, targets = batches(1)[0]
    tiny_net.train()
    torch.nn.functional.cross_entropy(tiny_net(inputs), targets).backward()
    for name, weight in method.weights.items():
        assert weight is tiny_net.get_parameter(f"{name}.weight"), name  # swapped back
        assert torch.equal(weight.detach(), before[name])
        dropped = (weight.grad == 0) & method.masks[name].bool()
        active = method.masks[name].bool().sum()
        assert 0.3 < dropped.sum() / active < 0.7, name  # gradient only through kept ones
    tiny_net.eval()
    with torch.no_grad():
        assert torch.equal(tiny_net(inputs), tiny_net(inputs))  # no dropping at evaluation
    method.state_dict()  # the identity guard still finds every weight


def test_stage_arithmetic():
    stages = replayed_stages(3, 10)
    assert [(s.start, s.end) for s in stages] == [(0, 10), (10, 20), (20, 30)]
    assert stage_at(stages, 9).index == 0 and stage_at(stages, 10).index == 1
    assert stages[2].schedule_step(25) == 5
    held = replayed_stages(2, 10, hold_final_lr=True)
    assert held[0].schedule_step(3) == 3 and held[1].schedule_step(14) == 9


def run_two_rounds(monkeypatch, tmp_path, extra_hooks=()):
    overrides = [
        *[o for o in QUICK if not o.startswith("sparsity.")],
        "logger=none",
        "trainer.deterministic=true",
        "lr_schedule.step_size_epochs=1",
        "trainer.log_every=1",
        f"hydra.searchpath=[file://{POLICIES / 'conf'}]",
        "sparsity=two_rounds",
    ]
    cfg, run_dir, choices = compose_run(overrides, tmp_path)

    return run_with(monkeypatch, cfg, run_dir, choices, extra_hooks), run_dir


def test_two_stages_replay_the_lr_and_resume_mid_stage(monkeypatch, tmp_path, policies_on_path):
    summary, run_dir = run_two_rounds(monkeypatch, tmp_path / "a")
    records = read_metrics(run_dir)
    lrs = {r["step"]: r["train/lr"] for r in records if "train/lr" in r}
    per_stage = summary["steps"] // 2  # 3 epochs of 22 steps per stage
    assert per_stage == 66
    assert lrs[1] == lrs[per_stage + 1] == pytest.approx(0.1)  # the schedule starts again
    assert lrs[per_stage] == pytest.approx(0.1 * 0.2**2)
    assert [row["stage"] for row in summary["stages"]] == [0, 1]
    assert [row["step"] for row in summary["stages"]] == [66, 132]
    assert {r["stage"] for r in records} == {0, 1}

    with pytest.raises(Preempted):
        run_two_rounds(monkeypatch, tmp_path / "b", [InterruptAt(80)])  # inside stage 1
    resumed, resumed_dir = run_two_rounds(monkeypatch, tmp_path / "b")
    assert resumed["stages"] == summary["stages"]
    assert read_metrics(resumed_dir) == records
    a = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(resumed_dir / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_run_folder_describes_itself(tmp_path):
    cfg, run_dir, choices = compose_run([*QUICK, "logger=none"], tmp_path)
    summary = run_module.run(cfg, run_dir, choices)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["sparsity"]["_target_"] == "sst.sparsity.SRigL"
    assert config["choices"]["model"] == "mlp" and config["trainer"]["epochs"] == 3
    assert "${" not in json.dumps(config)  # fully resolved

    folder = RunFolder(run_dir)
    assert folder.status == "finished" and folder.summary == summary
    run = load_run(run_dir)  # no dataset, no Hydra: the checkpoint alone rebuilds the model
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert set(run.masks) == {"1", "3", "5"} and run.step == summary["steps"]
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    inputs = torch.rand(4, 1, 8, 8)
    assert run.model(inputs).shape == (4, 10) and not run.model.training
    assert (
        state["model_meta"]["num_classes"] == 10 and state["sparsity"]["step"] == summary["steps"]
    )


def test_an_unfinished_run_is_not_loaded_as_finished(tmp_path):
    cfg, run_dir, choices = compose_run([*QUICK, "logger=none"], tmp_path)
    loop = build(cfg, run_dir, choices)
    loop.save_checkpoint()
    assert RunFolder(run_dir).status == "unfinished"
    with pytest.raises(ValueError, match="not a finished sst run"):
        load_run(run_dir)
    assert load_run(run_dir, require_finished=False).step == 0


def test_the_best_accuracy_counts_evaluations_at_the_final_sparsity_only():
    """GMP, LR rewinding, one-shot and targeted dropout evaluate denser networks before
    their last prune; the best test accuracy is the final sparse network's, and a
    checkpoint keeps what it needs (also when written before this rule)."""
    from sst.engine.records import Records

    records = Records(None, progress_bar=False)
    for sparsity, acc in [(0.0, 97.0), (0.5, 95.0), (0.9, 90.0), (0.9, 91.5), (0.9, 91.0)]:
        records.evaluation({"test/acc": acc}, {"sparsity/masked_layers": sparsity}, step=1, epoch=0)
    assert records.results(multi_stage=False)["best_test_acc"] == 91.5
    resumed = Records(None, progress_bar=False)
    resumed.load_state_dict(records.state_dict())
    resumed.evaluation({"test/acc": 92.0}, {"sparsity/masked_layers": 0.9}, step=2, epoch=1)
    assert resumed.best_acc == 92.0
    old = {"best_acc": 97.0, "last_eval": {"test/acc": 91.0}, "stage_results": []}
    resumed.load_state_dict(old)
    assert resumed.best_acc == 97.0  # an old checkpoint's best, as it was recorded
    plain = Records(None, progress_bar=False)  # no sparsity metric: every evaluation counts
    for acc in (80.0, 85.0, 84.0):
        plain.evaluation({"test/acc": acc}, {}, step=1, epoch=0)
    assert plain.best_acc == 85.0
