"""Targeted dropout: candidate sets on hand-built weights, the observed drop rate, stored
weights untouched by dropping, evaluation without dropping, the ramp, the final prune, and
an exact resume."""

import copy

import pytest
import torch
from conftest import TinyConvNet, batches, train_steps
from torch import nn

from sst.sparsity import TargetedDropout

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models


def linear(rows) -> nn.Sequential:
    """A hidden layer with the given weights, then a 2-class output layer."""
    weight = torch.tensor(rows, dtype=torch.float32)
    model = nn.Sequential(
        nn.Linear(weight.shape[1], weight.shape[0]), nn.Linear(weight.shape[0], 2)
    )
    with torch.no_grad():
        model[0].weight.copy_(weight)
    return model


ROWS = [
    [0.1, -4.0, 0.3, 2.0, -0.2, 1.0, 3.0, -0.05],
    [5.0, 0.4, -0.6, 0.01, 0.7, -2.5, 0.2, 6.0],
]


def targeted(method, name="0"):
    return method.targeted(name, method.weights[name]).int().tolist()


def test_weight_variant_targets_the_bottom_of_every_neuron():
    method = TargetedDropout(
        linear(ROWS),
        None,
        density=0.5,
        total_steps=10,
        structure="constant_fanin",
        distribution="uniform",
        include=["0"],
    )
    assert targeted(method) == [[1, 0, 1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0, 1, 0]]


def test_unstructured_targets_the_bottom_of_the_layer():
    method = TargetedDropout(
        linear(ROWS), None, density=0.25, total_steps=10, distribution="uniform", include=["0"]
    )
    # the 12 smallest |w| of 16, wherever they are: 4, 3, 5, 6 are kept
    assert targeted(method) == [[1, 0, 1, 1, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1, 1, 0]]


def test_nm_variant_targets_inside_every_group_of_m():
    method = TargetedDropout(
        linear(ROWS),
        None,
        density=0.5,
        total_steps=10,
        structure="nm",
        distribution="uniform",
        include=["0"],
    )
    assert targeted(method) == [[1, 0, 1, 0, 1, 0, 0, 1], [0, 1, 0, 1, 1, 0, 1, 0]]


def test_unit_variant_targets_the_weakest_neurons():
    rows = [[1.0, 1.0], [0.1, 0.1], [3.0, 0.0], [0.5, -0.5]]  # norms 1.41, 0.14, 3, 0.71
    method = TargetedDropout(
        linear(rows),
        None,
        density=0.5,
        total_steps=10,
        variant="unit",
        distribution="uniform",
        include=["0"],
    )
    assert targeted(method) == [[0, 0], [1, 1], [0, 0], [1, 1]]
    with pytest.raises(ValueError, match=r"variant=unit would prune output neurons .* '1'"):
        TargetedDropout(linear(rows), None, density=0.5, total_steps=10, variant="unit")
    with pytest.raises(ValueError, match="variant=unit targets and finally prunes whole neurons"):
        TargetedDropout(
            linear(rows), None, density=0.5, total_steps=10, variant="unit", structure="nm"
        )


def test_unit_variant_drops_each_weight_of_a_candidate_neuron_on_its_own_draw():
    # for-ai/TD@877e3b9 models/utils/dropouts.py targeted_unit_dropout: one uniform draw per
    # weight of a candidate unit, so a candidate neuron loses about alpha of its weights
    # in a pass, not all of them; the words say so (the error named "drops whole neurons")
    rows = [[1.0] * 64, [0.1] * 64, [3.0] * 64, [0.5] * 64]
    method = TargetedDropout(
        linear(rows),
        None,
        density=0.5,
        total_steps=10,
        variant="unit",
        distribution="uniform",
        include=["0"],
    )
    factor = method.forward_mask("0", method.weights["0"])
    dropped = (factor == 0).sum(dim=1).tolist()
    assert dropped[0] == dropped[2] == 0  # the strong neurons are not candidates
    assert 0 < dropped[1] < 64 and 0 < dropped[3] < 64  # candidates: some weights, not all
    doc = " ".join(TargetedDropout.__doc__.split())
    assert "dropped on its own draw" in doc and "whole neurons are dropped" not in doc


class Capture:
    """Records the weight a layer computes with in each forward pass (registered after the
    method's own forward hook, so it sees the dropped weight)."""

    def __init__(self, module):
        self.seen = []
        module.register_forward_pre_hook(lambda mod, args: self.seen.append(mod.weight.detach()))


def test_observed_drop_rate_and_stored_weights_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    method = TargetedDropout(
        model,
        None,
        density=0.4,
        total_steps=100,
        drop_rate=0.3,
        structure="constant_fanin",
        distribution="uniform",
        include=["0"],
    )
    capture = Capture(model[0])
    stored = model[0].weight.detach().clone()
    candidates = method.targeted("0", model[0].weight)
    passes = 200
    for _ in range(passes):
        model(torch.randn(2, 64))
    assert torch.equal(model[0].weight, stored)  # dropping never writes the weight
    dropped = torch.stack([seen == 0 for seen in capture.seen]).float()
    assert not dropped[:, ~candidates].any()  # only candidates are dropped
    rate = dropped[:, candidates].mean().item()
    n = passes * int(candidates.sum())
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5
    per_pass = dropped[:, candidates].mean(dim=1)
    assert per_pass.std() > 0  # fresh draws every pass

    model.eval()
    capture.seen.clear()
    model(torch.randn(2, 64))
    assert torch.equal(capture.seen[0], stored)  # evaluation drops nothing


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        return self.att(x, x, x, need_weights=False)[0]


def test_an_attention_out_projection_is_dropped_too():
    """A MultiheadAttention reads ``out_proj.weight`` without calling ``out_proj``: the
    drop must hook the attention, or out_proj trains undropped and is pruned at the end."""
    torch.manual_seed(0)
    model = Attention()
    method = TargetedDropout(
        model,
        None,
        density=0.5,
        total_steps=100,
        drop_rate=1.0,
        layer_types=["Linear", "MultiheadAttention"],
    )
    assert set(method.masks) == {"att.in_proj_weight", "att.out_proj"}
    seen = {}

    def record(_module, _args):
        seen["out_proj"] = model.att.out_proj.weight.detach().clone()

    model.att.register_forward_pre_hook(record)  # after the method's hook: sees the swap
    stored = model.att.out_proj.weight.detach().clone()
    candidates = method.targeted("att.out_proj", model.att.out_proj.weight)
    model(torch.randn(2, 3, 16))
    assert candidates.any() and torch.all(seen["out_proj"][candidates] == 0)
    assert torch.equal(seen["out_proj"][~candidates], stored[~candidates])
    assert torch.equal(model.att.out_proj.weight, stored)  # restored after the pass


def test_dropped_weights_get_no_gradient_and_the_optimizer_sees_the_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = TargetedDropout(
        model,
        opt,
        density=0.25,
        total_steps=10,
        drop_rate=0.9,
        distribution="uniform",
        include=["0"],
    )
    capture = Capture(model[0])
    before = model[0].weight.detach().clone()
    loss = nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,)))
    loss.backward()
    dropped = capture.seen[0] == 0
    assert dropped.any()
    assert torch.all(model[0].weight.grad[dropped] == 0)
    grad = model[0].weight.grad.clone()
    method.before_step()
    opt.step()
    method.after_step()
    assert torch.allclose(model[0].weight, before - 0.1 * grad)  # dropped ones stay as they were


def test_ramp_grows_targeting_and_drop_rate_from_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    method = TargetedDropout(
        model,
        None,
        density=0.5,
        total_steps=10,
        ramp=True,
        drop_rate=0.8,
        distribution="uniform",
        include=["0"],
    )
    assert method.rates() == (0.0, 0.0)
    assert method.forward_mask("0", model[0].weight) is None
    method.step = 5
    share, alpha = method.rates()
    assert (share, alpha) == (0.5, pytest.approx(0.4))
    assert int(method.targeted("0", model[0].weight, share).sum()) == 32 * 8  # half of 16
    method.step = 10
    assert method.rates() == (1.0, 0.8)


def test_final_prune_removes_the_candidates_and_stops_dropping(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.05, momentum=0.9)
    method = TargetedDropout(tiny_net, opt, density=0.3, total_steps=10, structure="constant_fanin")
    train_steps(tiny_net, opt, method, batches(10))
    assert method.metrics()["sparsity/masked_layers"] == 0.0
    expected = {n: ~method.targeted(n, w) for n, w in method.weights.items()}
    (train, pruned) = method.stages(10)
    assert (train.steps, pruned.steps, train.label) == (10, 0, "before_prune")
    method.on_stage_start(pruned)
    assert method.pruned
    for name, mask in method.masks.items():
        assert torch.equal(mask.bool(), expected[name]), name
        method.structure.verify(mask.bool(), method.capacity[name])
    assert method.metrics()["sparsity/masked_layers"] == pytest.approx(0.7, abs=0.01)
    assert method.forward_mask("fc1", tiny_net.fc1.weight) is None


def test_resume_drops_the_same_weights():
    data = batches(12)

    def fresh():
        torch.manual_seed(0)
        model = TinyConvNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, TargetedDropout(model, opt, density=0.3, total_steps=12, seed=3)

    model_a, opt_a, method_a = fresh()
    train_steps(model_a, opt_a, method_a, data)
    model_b, opt_b, method_b = fresh()
    train_steps(model_b, opt_b, method_b, data[:5])
    saved = copy.deepcopy((model_b.state_dict(), opt_b.state_dict(), method_b.state_dict()))
    model_c, opt_c, method_c = fresh()
    model_c.load_state_dict(saved[0])
    opt_c.load_state_dict(saved[1])
    method_c.load_state_dict(saved[2])
    train_steps(model_c, opt_c, method_c, data[5:])
    for (name, a), c in zip(
        model_a.state_dict().items(), model_c.state_dict().values(), strict=True
    ):
        assert torch.equal(a, c), name
