"""Single RigL / SRigL updates on small hand-built tensors with known answers, and the
methods' updates checked against those rules."""

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from sst.sparsity import SET, RigL, SRigL, rigl, srigl
from sst.sparsity import set as set_rule
from sst.sparsity.mask_ops import as_float, row_counts, top_indices
from sst.sparsity.srigl import ablation_threshold
from sst.sparsity.structure import Structure, layer_budget


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_rigl_drops_smallest_magnitude_and_grows_largest_gradient():
    weight = t([[0.5, -0.1, 0, 0], [0.3, 0, 0.05, 0]])
    mask = t([[1, 1, 0, 0], [1, 0, 1, 0]])
    grad = t([[0, 0, 0.9, 0.1], [0, 0.8, 0, 0.2]])
    new = rigl.update_mask(weight, mask, grad, drop_fraction=0.5)
    # n_drop = int(4 * 0.5) = 2: -0.1 and 0.05 go; 0.9 and 0.8 grow
    assert new.tolist() == [[True, False, True, False], [True, True, False, False]]


def test_rigl_can_regrow_a_weight_it_just_dropped():
    weight = t([[0.5, -0.1, 0, 0]])
    mask = t([[1, 1, 0, 0]])
    grad = t([[0, 0.9, 0.1, 0.2]])
    new = rigl.update_mask(weight, mask, grad, drop_fraction=0.5)
    # -0.1 is dropped (n_drop = 1) and has the largest gradient among positions not kept
    assert new.tolist() == [[True, True, False, False]]


def test_rigl_keeps_the_active_count():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 48, generator=gen)
    mask = (torch.rand(32, 48, generator=gen) < 0.2).float()
    weight *= mask
    new = rigl.update_mask(weight, mask, torch.randn(32, 48, generator=gen), 0.3)
    assert int(new.sum()) == int(mask.sum())
    dropped = mask.bool() & ~new
    assert int(dropped.sum()) <= int(mask.sum() * 0.3)


# SRigL layer: 4 neurons x fan-in 6, density 0.5 -> budget 12, k = 3.
WEIGHT = t(
    [
        [1.0, 0.9, 0.8, 0, 0, 0],
        [0.7, 0.6, 0.5, 0, 0, 0],
        [0.4, 0.35, 0.3, 0, 0, 0],
        [0.01, 0.02, 0.03, 0, 0, 0],
    ]
)
MASK = (WEIGHT != 0).float()
GRAD = t(
    [
        [0.01, 0.01, 0.01, 0.9, 0.01, 0.01],
        [0.01, 0.01, 0.01, 0.8, 0.01, 0.01],
        [0.01, 0.01, 0.01, 0.7, 0.6, 0.01],
        [0.001, 0.002, 0.003, 0.004, 0.005, 0.006],
    ]
)


def test_srigl_ablates_a_neuron_without_salient_weights_and_redistributes_fan_in():
    new, ablated = srigl.update_mask(WEIGHT, MASK, GRAD, 0.25, 0.3, density=0.5)
    # n_drop = 3 (row 3's weights); salient per neuron: 4, 4, 4, 0; threshold
    # max(1, int(0.3 * 3)) = 1 -> neuron 3 ablated; k' = 12 // 3 = 4: each survivor grows
    # its largest-gradient position.
    assert ablated.tolist() == [False, False, False, True]
    assert new.int().tolist() == [
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ]


def test_srigl_guard_keeps_a_minimum_number_of_neurons():
    # gamma_sal = 5 (an absolute count) would ablate every neuron (counts 4, 4, 4, 0);
    # m = 12 // 6 = 2, the count at sorted position 2 is 4 < 5, so the threshold drops to 4
    new, ablated = srigl.update_mask(WEIGHT, MASK, GRAD, 0.25, 5, density=0.5)
    assert ablated.tolist() == [False, False, False, True]
    assert new.sum(dim=1).tolist() == [4, 4, 4, 0]


def test_srigl_without_ablation_keeps_constant_fan_in():
    for gamma_sal, protected in ((0.0, False), (0.3, True)):
        new, ablated = srigl.update_mask(
            WEIGHT, MASK, GRAD, 0.25, gamma_sal, density=0.5, protected=protected
        )
        assert not ablated.any()
        assert new.sum(dim=1).tolist() == [3, 3, 3, 3]
        # neuron 3 lost its three weights to the drop and regrows its top-3 gradients
        assert new[3].int().tolist() == [0, 0, 0, 1, 1, 1]


def test_srigl_ablated_neuron_comes_back_when_its_gradient_is_salient():
    weight = t(
        [
            [1.0, 0.9, 0.8, 0.75, 0, 0],
            [0.7, 0.6, 0.5, 0.45, 0, 0],
            [0.4, 0.35, 0.3, 0.25, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    mask = (weight != 0).float()
    grad = torch.full((4, 6), 0.01)
    grad[3, :3] = torch.tensor([5.0, 4.0, 3.0])
    new, ablated = srigl.update_mask(weight, mask, grad, 0.25, 0.3, density=0.5)
    # n_drop = 3 -> the top-3 gradients are all neuron 3's: 3 salient >= int(0.3 * 4) = 1
    assert not ablated.any()
    assert new.sum(dim=1).tolist() == [3, 3, 3, 3]
    assert new[3].int().tolist() == [1, 1, 1, 0, 0, 0]


def test_srigl_dense_denominator_raises_the_threshold():
    # 6 neurons x fan-in 6 at density 1/3: budget 12, k = 2, guard m = 12 // 6 = 2
    weight = torch.zeros(6, 6)
    weight[:3, :2] = 1.0
    weight[3:, :2] = 0.01
    mask = (weight != 0).float()
    grad = torch.full((6, 6), 0.001)
    grad[0, 2] = grad[1, 2] = grad[2, 2] = 1.0
    grad[3, 2:4] = 0.9
    grad[4, 2] = 0.8
    # n_drop = 6 (rows 3-5 lose both weights); salient counts 3, 3, 3, 2, 1, 0
    _, sparse = srigl.update_mask(weight, mask, grad, 0.5, 0.5, density=1 / 3)
    # threshold max(1, int(0.5 * 2)) = 1: only neuron 5 goes
    assert sparse.tolist() == [False, False, False, False, False, True]
    new, dense = srigl.update_mask(
        weight, mask, grad, 0.5, 0.5, density=1 / 3, ablation_denominator="dense"
    )
    # threshold int(0.5 * 6) = 3: neurons 3, 4, 5 go; k' = 12 // 3 = 4
    assert dense.tolist() == [False, False, False, True, True, True]
    assert new.sum(dim=1).tolist() == [4, 4, 4, 0, 0, 0]


def test_ablation_threshold_formula():
    counts = torch.tensor([5, 4, 1, 0])
    assert ablation_threshold(0.3, 10, counts, min_neurons=10) == 3
    assert ablation_threshold(0.05, 10, counts, min_neurons=10) == 1  # max(1, int(0.5))
    assert ablation_threshold(2, 10, counts, min_neurons=10) == 2  # absolute count
    assert ablation_threshold(0.3, 10, counts, min_neurons=2) == 1  # guard: sorted[2] = 1
    assert ablation_threshold(0.3, 10, counts, min_neurons=1) == 3  # sorted[1] = 4 >= 3


def test_top_indices_matches_topk_on_large_layers():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(65536, generator=gen)
    scores[torch.rand(65536, generator=gen) < 0.3] = float("-inf")  # kept positions
    for k in (1500, 6000, 20000):
        expected = set(torch.topk(scores, k).indices.tolist())
        assert set(top_indices(scores, k).tolist()) == expected


def test_top_indices_falls_back_when_the_sample_misjudges_the_threshold():
    # Every value the strided sample sees is large, so its threshold admits fewer than k.
    scores = torch.rand(65536, generator=torch.Generator().manual_seed(1))
    scores[::16] += 10.0
    expected = set(torch.topk(scores, 2000).indices.tolist())
    assert set(top_indices(scores, 2000).tolist()) == expected


def test_top_indices_takes_all_finite_entries_when_k_exceeds_them():
    scores = torch.full((65536,), float("-inf"))
    scores[:25000] = torch.rand(25000, generator=torch.Generator().manual_seed(2))
    chosen = top_indices(scores, 30000)
    assert chosen.numel() == 30000 and len(set(chosen.tolist())) == 30000
    assert set(range(25000)) <= set(chosen.tolist())


def test_mask_conversions_match_the_plain_ones_and_refuse_non_boolean_masks():
    mask = torch.rand(7, 9, generator=torch.Generator().manual_seed(3)) < 0.4
    assert torch.equal(as_float(mask, torch.float16), mask.to(torch.float16))
    units = mask.t()  # non-contiguous
    assert torch.equal(row_counts(units), units.sum(dim=1))
    with pytest.raises(TypeError, match="boolean mask"):
        row_counts(mask.float())


def test_top_indices_ranks_nan_first_like_topk():
    scores = torch.rand(65536, generator=torch.Generator().manual_seed(5))
    scores[1] = float("nan")  # not on the sample's stride
    expected = set(torch.topk(scores, 3).indices.tolist())
    assert 1 in expected and set(top_indices(scores, 3).tolist()) == expected


def test_top_indices_with_nan_in_the_sample():
    scores = torch.rand(65536, generator=torch.Generator().manual_seed(6))
    scores[::16][:40] = float("nan")  # on the sample's stride: the threshold itself is NaN
    expected = set(torch.topk(scores, 100).indices.tolist())
    assert set(top_indices(scores, 100).tolist()) == expected


def test_srigl_threshold_uses_the_unablated_fan_in():
    # 6 neurons x fan-in 12 at density 1/4: budget 18, k0 = 3, guard m = 18 // 12 = 1.
    # Neurons 3-5 were ablated by an earlier update, so the survivors hold k' = 6 each.
    weight = torch.zeros(6, 12)
    weight[0, :6] = torch.tensor([1.0, 0.95, 0.9, 0.85, 0.8, 0.75])
    weight[1, :6] = torch.tensor([0.7, 0.65, 0.6, 0.03, 0.02, 0.01])
    weight[2, :6] = torch.tensor([0.09, 0.08, 0.07, 0.06, 0.05, 0.04])
    mask = (weight != 0).float()
    grad = torch.arange(72, dtype=torch.float32).reshape(6, 12) * 1e-5
    grad[2, 6:8] = 1.0
    grad[3, :3] = 0.9
    grad[4, :4] = torch.tensor([0.8, 0.79, 0.78, 0.77])
    new, ablated = srigl.update_mask(weight, mask, grad, 0.5, 0.5, density=0.25)
    # n_drop = 9, n_keep = 9 (neuron 0's six weights and neuron 1's three largest); with the
    # top 9 gradients the salient counts are 6, 3, 2, 3, 4, 0. Threshold
    # max(1, int(0.5 * k0)) = 1 ablates neuron 5 only; the current fan-in 6 would give
    # int(0.5 * 6) = 3 and ablate neuron 2 as well.
    assert ablated.tolist() == [False, False, False, False, False, True]
    assert new.sum(dim=1).tolist() == [3, 3, 3, 3, 3, 0]  # k' = 18 // 5
    assert new[0, :6].int().tolist() == [1, 1, 1, 0, 0, 0]  # trimmed by magnitude
    assert new[1, :6].int().tolist() == [1, 1, 1, 0, 0, 0]
    assert new[2].nonzero().squeeze(1).tolist() == [6, 7, 11]  # salient grads, then grad
    assert new[4, :4].int().tolist() == [1, 1, 1, 0]


def test_srigl_survivors_keep_their_top_weights_when_a_neuron_with_large_weights_goes():
    # 4 neurons x fan-in 8 at density 1/2: budget 16, k0 = 4, guard m = 2.
    weight = torch.zeros(4, 8)
    weight[0, :4] = torch.tensor([1.0, 0.9, 0.8, 0.7])
    weight[1, :4] = torch.tensor([0.6, 0.5, 0.4, 0.35])
    weight[2, :4] = torch.tensor([0.3, 0.25, 0.2, 0.15])
    weight[3, :4] = torch.tensor([0.55, 0.45, 0.01, 0.02])
    mask = (weight != 0).float()
    grad = torch.arange(32, dtype=torch.float32).reshape(4, 8) * 1e-5
    grad[0, 4:6] = torch.tensor([1.0, 0.99])
    grad[1, 4:6] = torch.tensor([0.9, 0.89])
    grad[2, 4:8] = torch.tensor([0.8, 0.79, 0.78, 0.77])
    new, ablated = srigl.update_mask(weight, mask, grad, 0.5, 0.75, density=0.5)
    # n_drop = 8, n_keep = 8: salient counts 4 + 2, 2 + 2, 0 + 4, 2 (neuron 3 holds the
    # 0.55 and 0.45 of the top 8); threshold int(0.75 * 4) = 3 ablates neuron 3.
    assert ablated.tolist() == [False, False, False, True]
    # Neuron 3's four weights count toward the eight removals, so the survivors keep their
    # own top 8 (neurons 0 and 1 whole) and lose only 4 (neuron 2's); a layer-wide drop
    # would have taken neuron 1's 0.4 and 0.35 as well. Each survivor then grows to
    # k' = 16 // 3 = 5 by gradient (neuron 2's largest remaining gradient is at position 3).
    assert new.int().tolist() == [
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ]


def test_srigl_drops_exact_zero_weights_first():
    # 2 neurons x fan-in 6 at density 1/2: budget 6, k = 3. Three of the six active weights
    # are exact zeros, so n_keep = 3 (not 6 - int(6 * 0.25) = 5) and n_drop = 3.
    weight = t([[0.5, 0, 0, 0, 0, 0], [0.4, 0.3, 0, 0, 0, 0]])
    mask = t([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    grad = t([[0, 0.01, 0.02, 0.9, 0.8, 0.03], [0, 0, 0.04, 0.05, 0.06, 0.7]])
    for gamma_sal in (0.0, 0.3):
        new, ablated = srigl.update_mask(weight, mask, grad, 0.25, gamma_sal, density=0.5)
        assert not ablated.any()
        # the zeros go; each neuron keeps its non-zero weights and regrows by gradient
        assert new.int().tolist() == [[1, 0, 0, 1, 1, 0], [1, 1, 0, 0, 0, 1]]


def test_srigl_ablation_does_not_cascade_over_updates():
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps, delta_t = 300, 20  # 11 updates before t_end = 225
    method = SRigL(
        model,
        opt,
        density=0.1,
        gamma_sal=0.9,
        total_steps=steps,
        delta_t=delta_t,
        distribution="uniform",
    )
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        method.before_step()
        opt.step()
        method.after_step()
        if method.is_update_step(step):
            history.append({n: int(a.sum()) for n, a in method.ablated.items()})
    assert len(history) == 11
    for name in ("0", "2"):  # the hidden layers (the output layer is protected)
        counts = [h[name] for h in history]
        assert counts[0] > 0, counts
        # the salient counts hardly move, so neither does ablation (the cascade took it
        # from about 50 and 77 to the guard within 4 updates)
        assert max(counts) <= counts[0] + 5, (name, counts)
        weight = method.weights[name]
        guard = layer_budget(weight.numel(), 0.1) // weight[0].numel()
        assert weight.shape[0] - counts[-1] >= 2 * (guard + 1), (name, counts)


# ----------------------------------------------------------------------------- the methods
# A method's update of a layer is its module's ``update_mask`` on the same inputs: the rule
# the tests above pin is the rule training runs.


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def _update_inputs(method, model, opt, delta_t):
    """Trains up to the first update step and stops where ``after_step`` would update;
    returns what each layer's update sees: weights, boolean masks, dense gradients."""
    gen = torch.Generator().manual_seed(1)
    for step in range(1, delta_t + 1):
        x, y = torch.randn(16, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        method.before_step()
        opt.step()
        if step < delta_t:
            method.after_step()
    method.apply_masks()  # what after_step does before its update
    weights = {n: w.detach().clone() for n, w in method.weights.items()}
    masks = {n: m.bool().clone() for n, m in method.masks.items()}
    grads = {n: g.clone() for n, g in method.dense_grads.items()}
    return weights, masks, grads


def _spy(monkeypatch, module):
    calls = []
    rule = module.update_mask

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return rule(*args, **kwargs)

    monkeypatch.setattr(module, "update_mask", spy)
    return calls


@pytest.mark.parametrize("structure", ["unstructured", "constant_fanin"])
def test_rigl_method_updates_each_layer_by_rigl_update_mask(monkeypatch, structure):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = RigL(model, opt, density=0.2, total_steps=100, delta_t=5, structure=structure)
    weights, masks, grads = _update_inputs(method, model, opt, 5)
    fraction = method.drop_fraction(5)
    expected = {
        n: rigl.update_mask(
            weights[n], masks[n], grads[n], fraction, structure=Structure(structure)
        )
        for n in weights
    }
    calls = _spy(monkeypatch, rigl)
    method.after_step()
    assert len(calls) == len(weights)
    for name, mask in expected.items():
        assert not torch.equal(mask, masks[name]), name  # the update changed the layer
        assert torch.equal(method.masks[name].bool(), mask), name


def test_srigl_method_updates_each_layer_by_srigl_update_mask(monkeypatch):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = SRigL(model, opt, density=0.1, gamma_sal=0.9, total_steps=100, delta_t=5)
    weights, masks, grads = _update_inputs(method, model, opt, 5)
    fraction = method.drop_fraction(5)
    expected = {
        n: srigl.update_mask(
            weights[n],
            masks[n],
            grads[n],
            fraction,
            0.9,
            density=method.layer_density[n],
            protected=n in method.protected,
        )
        for n in weights
    }
    calls = _spy(monkeypatch, srigl)
    method.after_step()
    assert len(calls) == len(weights)
    assert sum(int(a.sum()) for _, a in expected.values()) > 0  # ablation is exercised
    for name, (mask, ablated) in expected.items():
        assert torch.equal(method.masks[name].bool(), mask), name
        assert torch.equal(method.ablated[name], ablated), name


def test_set_method_updates_each_layer_by_set_update_mask(monkeypatch):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = SET(model, opt, density=0.2, total_steps=100, delta_t=5)
    weights, masks, _ = _update_inputs(method, model, opt, 5)
    generator = torch.Generator()
    generator.set_state(method.generator.get_state())
    fraction = method.drop_fraction(5)
    expected = {n: set_rule.update_mask(weights[n], masks[n], fraction, generator) for n in weights}
    calls = _spy(monkeypatch, set_rule)
    method.after_step()
    assert len(calls) == len(weights)
    for name, mask in expected.items():
        assert torch.equal(method.masks[name].bool(), mask), name


def test_rigl_update_mask_keeps_every_unit_count_under_a_structure():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 16, generator=gen)
    mask = Structure("nm", 2, 4).random_mask(weight.shape, 0.5, gen)
    weight *= mask
    nm = Structure("nm", 2, 4)
    new = rigl.update_mask(weight, mask, torch.randn(8, 16, generator=gen), 0.5, structure=nm)
    nm.verify(new, 2)
    assert not torch.equal(new, mask)
    fan_in = Structure("constant_fanin")
    mask = fan_in.random_mask(weight.shape, 0.25, gen)
    new = rigl.update_mask(
        weight * mask, mask, torch.randn(8, 16, generator=gen), 0.5, structure=fan_in
    )
    fan_in.verify(new, 4)


# ----------------------------------------------------------------------------- growth ties


def _dead_input_layer():
    """A 4 x 64 layer, 8 weights per row active at its end, whose dense gradient is 0
    everywhere but 3 positions per row (dead inputs): growth must fill 24 positions per
    layer-wide update from the zero-gradient ties."""
    weight = torch.zeros(4, 64)
    weight[:, 56:] = torch.arange(1, 9, dtype=torch.float32)
    mask = weight != 0
    grad = torch.zeros(4, 64)
    grad[:, 40:43] = 1.0
    return weight, mask, grad


def test_growth_ties_default_to_topks_order_and_random_breaks_them_from_the_generator():
    # google-research/rigl@d39fc7d rigl/sparse_optimizers_base.py: top_k grows the ties in
    # index order (noise goes to the drop scores only); grow_ties=random shuffles the
    # exact-zero-gradient candidates with the method's generator
    weight, mask, grad = _dead_input_layer()
    plain = rigl.update_mask(weight, mask, grad, 0.75)
    assert torch.equal(plain, rigl.update_mask(weight, mask, grad, 0.75, tie_generator=None))

    def shuffled(seed):
        generator = torch.Generator().manual_seed(seed)
        return rigl.update_mask(weight, mask, grad, 0.75, tie_generator=generator)

    first, again, other = shuffled(0), shuffled(0), shuffled(1)
    assert torch.equal(first, again)  # reproducible from the generator
    assert not torch.equal(first, other) and not torch.equal(first, plain)
    for new in (plain, first, other):
        assert int(new.sum()) == int(mask.sum())
        assert new[:, 40:43].all()  # a positive gradient still grows before every tie
    # constant fan-in (SRigL's regrow): the same, per neuron
    srigl_plain, _ = srigl.update_mask(weight, mask, grad, 0.75, 0.0, density=0.125)
    srigl_random, _ = srigl.update_mask(
        weight,
        mask,
        grad,
        0.75,
        0.0,
        density=0.125,
        tie_generator=torch.Generator().manual_seed(0),
    )
    assert (srigl_random.sum(dim=1) == 8).all() and srigl_random[:, 40:43].all()
    assert not torch.equal(srigl_plain, srigl_random)


@pytest.mark.parametrize("cls", [RigL, SRigL])
def test_grow_ties_random_uses_the_methods_generator_and_index_leaves_it_untouched(cls):
    def update(ties, seed):
        """The masks after the first update of a method whose dense gradient is all 0, and
        whether the update drew from the method's generator."""
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        extra = {"gamma_sal": 0.0} if cls is SRigL else {}
        method = cls(
            model, opt, density=0.2, total_steps=100, delta_t=5, grow_ties=ties, seed=seed, **extra
        )
        _update_inputs(method, model, opt, 5)
        before = method.generator.get_state()
        method.dense_grads = {n: torch.zeros_like(g) for n, g in method.dense_grads.items()}
        method.update_topology(5)  # every candidate ties at 0: the order alone decides
        drew = not torch.equal(before, method.generator.get_state())
        return {n: m.clone() for n, m in method.masks.items()}, drew

    plain, drew = update("index", 0)
    assert not drew  # the default draws nothing: earlier runs are unchanged
    first, drew = update("random", 0)
    assert drew
    again, _ = update("random", 0)
    assert all(torch.equal(first[n], again[n]) for n in first)  # reproducible from seed
    assert any(not torch.equal(first[n], plain[n]) for n in first)  # same run, other ties
    with pytest.raises(ValueError, match="grow_ties='noise' is unknown"):
        update("noise", 0)
