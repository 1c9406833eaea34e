"""LR rewinding: the round count, the sparsity after every round, the LR replayed at every
round's start, weight rewinding, momentum reset, and a run killed in round 2 that resumes
to the uninterrupted result."""

import pytest
import torch
from conftest import TinyConvNet, batches, train_steps
from omegaconf import OmegaConf
from runs import QUICK, InterruptAt, compose_run, read_metrics, run_with
from torch import nn

import sst.launch.run as run_module
from sst.config.directory import CONFIG_DIR
from sst.engine.signals import Preempted
from sst.sparsity import LRRewinding
from sst.sparsity.lr_rewinding import round_densities

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models


@pytest.mark.parametrize(
    ("density", "rounds"),
    [(0.8, 1), (0.512, 3), (0.21, 7), (0.107, 10), (0.055, 13), (0.0225, 17), (0.1, 11)],
)
def test_round_count_follows_the_density(density, rounds):
    densities = round_densities(density, 0.2, None)
    assert len(densities) == rounds
    assert densities[-1] == density
    assert densities[:-1] == pytest.approx([0.8**r for r in range(1, rounds)])


def test_given_rounds_end_at_the_density():
    assert round_densities(0.5, 0.2, 1) == [0.5]
    assert round_densities(0.3, 0.2, 3) == pytest.approx([0.8, 0.64, 0.3])
    assert round_densities(0.5, 0.2, 4) == pytest.approx([0.8, 0.64, 0.512, 0.5])
    # 0.8, 0.64, 0.512, 0.5 and then six rounds that would prune nothing
    with pytest.raises(ValueError, match=r"rounds=10 .* after 4 round\(s\): the other 6"):
        round_densities(0.5, 0.2, 10)


def run_rounds(method, model, opt, steps):
    """Every stage in a plain loop: what the Loop does, minus the LR."""
    after = []
    for stage in method.stages(steps):
        method.on_stage_start(stage)
        train_steps(model, opt, method, batches(stage.steps, seed=stage.index))
        after.append(method.metrics()["sparsity/masked_layers"])
    return after


def test_sparsity_after_round_r_is_one_minus_0_8_to_the_r(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.05, momentum=0.9)
    method = LRRewinding(tiny_net, opt, density=0.3, total_steps=3)
    assert method.distribution == "global_magnitude" and method.rounds == 6
    after = run_rounds(method, tiny_net, opt, 3)
    expected = [0.0] + [1 - 0.8**r for r in range(1, 6)] + [0.7]
    assert after == pytest.approx(expected, abs=1e-3)


def test_the_library_default_is_the_configs_global_magnitude_with_the_last_layer_pruned():
    # Renda et al. 2020 and conf/sparsity/lr_rewinding.yaml: one |w| threshold over every
    # layer, the final linear layer included; the library used to split by ERK, which
    # left the README's 10-class output layer dense
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    method = LRRewinding(model, None, density=0.5, total_steps=1)
    config = OmegaConf.load(f"{CONFIG_DIR}/sparsity/lr_rewinding.yaml")
    assert method.distribution == config.distribution == "global_magnitude"
    assert not config.dense_last and set(method.weights) == {"0", "2"}
    method.on_stage_start(method.stages(1)[-1])  # the last round: density 0.5
    masks = {n: method.masks[n].bool() for n in method.weights}
    kept = torch.cat([w.detach()[masks[n]].abs() for n, w in method.weights.items()])
    pruned = torch.cat([w.detach()[~masks[n]].abs() for n, w in method.weights.items()])
    assert kept.numel() == (64 * 256 + 256 * 10) // 2
    assert pruned.max() <= kept.min()  # one threshold over both layers


def test_global_scope_and_structures_reach_the_density():
    for extra in (
        {"distribution": "global_magnitude"},
        {"structure": "constant_fanin", "distribution": "uniform"},
        {"structure": "nm", "density": 0.5, "exclude": ["stem"], "distribution": "uniform"},
    ):
        torch.manual_seed(0)
        model = TinyConvNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        method = LRRewinding(model, opt, **{"density": 0.4, **extra}, total_steps=2)
        after = run_rounds(method, model, opt, 2)
        assert after == sorted(after)
        assert after[-1] == pytest.approx(1 - method.density, abs=0.01), extra


def test_weight_rewinding_restores_the_saved_weights(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.05, momentum=0.9)
    method = LRRewinding(
        tiny_net, opt, density=0.5, total_steps=6, retrain="weight_rewinding", rewind_step=2
    )
    stages = method.stages(6)
    assert [(s.start, s.end, s.schedule_step(s.start)) for s in stages[:3]] == [
        (0, 6, 0),
        (6, 10, 2),  # T - rewind_step steps, the LR schedule from rewind_step
        (10, 14, 2),
    ]
    data = batches(6)
    train_steps(tiny_net, opt, method, data[:2])
    saved = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    train_steps(tiny_net, opt, method, data[2:])
    assert not torch.equal(tiny_net.fc1.weight, saved["fc1.weight"])
    method.on_stage_start(stages[1])
    for name, weight in method.weights.items():
        mask = method.masks[name].bool()
        assert torch.equal(weight[mask], saved[f"{name}.weight"][mask]), name
        assert torch.all(weight[~mask] == 0)
    assert torch.equal(tiny_net.fc2.bias, saved["fc2.bias"])
    assert torch.equal(tiny_net.bn.running_mean, saved["bn.running_mean"])
    state = method.state_dict()
    assert torch.equal(state["rewind_state"]["fc1.weight"], saved["fc1.weight"])


def test_fine_tuning_holds_the_final_lr_and_momentum_can_be_reset(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.05, momentum=0.9)
    method = LRRewinding(
        tiny_net, opt, density=0.5, total_steps=4, retrain="fine_tuning", reset_momentum=True
    )
    stages = method.stages(4)
    assert [s.schedule_step(s.start) for s in stages] == [0, 3, 3, 3, 3]
    train_steps(tiny_net, opt, method, batches(4))
    assert opt.state[tiny_net.fc1.weight]["momentum_buffer"].abs().sum() > 0
    method.on_stage_start(stages[1])
    assert len(opt.state) == 0


# ----------------------------------------------------------------------------- real runs
ROUNDS = [
    *(o for o in QUICK if not o.startswith("sparsity.")),
    "logger=none",
    "sparsity=lr_rewinding",
    "sparsity.density=0.64",
]


def test_every_round_replays_the_lr_and_is_recorded(tmp_path):
    overrides = [*ROUNDS, "lr_schedule=cosine", "trainer.epochs=2", "trainer.log_every=1"]
    cfg, run_dir, choices = compose_run(overrides, tmp_path)
    summary = run_module.run(cfg, run_dir, choices)
    per_stage = 2 * (1437 // 64)
    assert summary["steps"] == 3 * per_stage
    assert [row["stage"] for row in summary["stages"]] == [0, 1, 2]
    sparsity = [row["sparsity_masked_layers"] for row in summary["stages"]]
    assert sparsity == pytest.approx([0.0, 0.2, 0.36], abs=1e-3)
    records = [r for r in read_metrics(run_dir) if "train/lr" in r]
    for stage in range(3):
        first = records[stage * per_stage]
        assert (first["step"], first["stage"]) == (stage * per_stage + 1, stage)
        assert first["train/lr"] == pytest.approx(0.1)  # the schedule's first value
        last = records[(stage + 1) * per_stage - 1]
        assert last["train/lr"] < 0.01  # cosine decayed within the round
    evaluations = [r for r in read_metrics(run_dir) if "test/acc" in r]
    assert {r["stage"] for r in evaluations} == {0, 1, 2}


def test_a_kill_in_round_two_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    overrides = [*ROUNDS, "trainer.epochs=1", "trainer.deterministic=true"]
    cfg, reference_dir, choices = compose_run(overrides, tmp_path / "a")
    reference = run_module.run(cfg, reference_dir, choices)

    cfg, run_dir, choices = compose_run(overrides, tmp_path / "b")
    hooks = [InterruptAt(50)]  # rounds are 22 steps: step 50 is in round 2 (steps 44-65)

    with pytest.raises(Preempted):
        run_with(monkeypatch, cfg, run_dir, choices, hooks)
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert (state["step"], state["stage_started"]) == (50, 2)
    hooks.clear()
    resumed = run_module.run(cfg, run_dir, choices)
    assert resumed["stages"] == reference["stages"]
    final_a = torch.load(reference_dir / "checkpoints/last.pt", weights_only=True)
    final_b = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    for key, value in final_a["sparsity"]["masks"].items():
        assert torch.equal(value, final_b["sparsity"]["masks"][key]), key
    assert read_metrics(run_dir) == read_metrics(reference_dir)
