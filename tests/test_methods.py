"""Sparsity methods over real short runs: exact sparsity and structure after every update,
masks that survive optimizers, zero-initialised growth, state round trips."""

import copy

import pytest
import torch
from conftest import TinyConvNet, batches, train_steps

from sst.sparsity import SET, Dense, RigL, SRigL, Static
from sst.sparsity.structure import layer_budget

STEPS = 40
KW = {"total_steps": STEPS, "delta_t": 5, "t_end": 0.75}


def assert_masks_hold(method):
    """Every layer has exactly its budgeted active weights in the required structure, and
    the weights are zero outside the mask (the optimizer state there is unread between
    updates, zeroed at each update and on save: tests/test_masks.py)."""
    for name, weight in method.weights.items():
        mask = method.masks[name].bool()
        assert torch.all(weight[~mask] == 0), name
        density = method.layer_density[name]
        if method.structure.kind == "unstructured":
            assert int(mask.sum()) == layer_budget(weight.numel(), density), name
        elif isinstance(method, SRigL):
            rows = mask.reshape(weight.shape[0], -1).sum(dim=1)
            alive = rows > 0
            k = layer_budget(weight.numel(), density) // int(alive.sum())
            assert torch.all(rows[alive] == k), (name, rows)
            assert torch.equal(~alive, method.ablated[name]), name
        else:
            method.structure.verify(mask, method.capacity[name])


METHODS = [
    (Static, {}),
    (Static, {"structure": "constant_fanin"}),
    (SET, {}),
    (RigL, {}),
    (RigL, {"structure": "constant_fanin"}),
    (RigL, {"structure": "nm", "n": 2, "m": 4, "exclude": ["stem"]}),
    (SRigL, {"gamma_sal": 0.3}),
    (SRigL, {"gamma_sal": 0.0}),
]


@pytest.mark.parametrize(("cls", "extra"), METHODS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_exact_sparsity_and_structure_after_every_step(tiny_net, cls, extra, optim):
    if optim == "sgd":
        opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(tiny_net.parameters(), lr=0.01, weight_decay=0.1)
    density = 0.5 if extra.get("structure") == "nm" else 0.2
    dynamic = {} if cls is Static else KW
    method = cls(tiny_net, opt, density=density, **dynamic, **extra)
    assert_masks_hold(method)
    train_steps(tiny_net, opt, method, batches(STEPS), check=assert_masks_hold)
    if cls is not Static:
        assert method.last_update["update/step"] == 25  # last update before t_end = 30
        assert method.metrics()["itop_rate"] > method.density


def test_dynamic_methods_change_the_topology(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9)
    method = RigL(tiny_net, opt, density=0.2, **KW)
    before = {n: m.clone() for n, m in method.masks.items()}
    train_steps(tiny_net, opt, method, batches(5))
    changed = sum(int((before[n] != m).sum()) for n, m in method.masks.items())
    assert changed > 0
    assert method.last_update["update/changed_fraction"] > 0


def test_grown_weights_start_at_zero_with_zero_optimizer_state(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9)
    method = RigL(tiny_net, opt, density=0.2, **KW)
    data = batches(5)
    train_steps(tiny_net, opt, method, data[:4])
    old = {n: m.bool().clone() for n, m in method.masks.items()}
    values = {n: w.detach().clone() for n, w in method.weights.items()}
    train_steps(tiny_net, opt, method, data[4:])  # step 5 updates the topology after stepping
    for name, weight in method.weights.items():
        new = method.masks[name].bool()
        grown = new & ~old[name]
        assert grown.any(), name
        assert torch.all(weight[grown] == 0)
        assert torch.all(opt.state[weight]["momentum_buffer"][grown] == 0)
        regrown_kept = new & old[name]
        # kept weights carry the optimizer step of step 5, not a reset
        assert torch.all((weight[regrown_kept] != 0) | (values[name][regrown_kept] == 0))


def test_masked_weights_stay_zero_through_momentum_after_drop(tiny_net):
    opt = torch.optim.SGD(
        tiny_net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    method = SET(tiny_net, opt, density=0.2, **KW)
    method.mask_set.mask_grads = True  # as under gradient clipping: gradients masked too
    data = batches(12)
    train_steps(tiny_net, opt, method, data)
    # momentum of dropped weights was zeroed and gradients are masked: a plain optimizer
    # step without the method's after_step must not move any inactive weight
    loss = torch.nn.functional.cross_entropy(tiny_net(data[0][0]), data[0][1])
    opt.zero_grad()
    loss.backward()
    method.before_step()
    opt.step()
    for name, weight in method.weights.items():
        assert torch.all(weight[~method.masks[name].bool()] == 0), name


def test_skip_optimizer_step_on_update_iterations(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9)
    method = RigL(tiny_net, opt, density=0.2, skip_optimizer_step=True, **KW)
    data = batches(5)
    train_steps(tiny_net, opt, method, data[:4])
    bias_before = tiny_net.fc2.bias.detach().clone()
    masks_before = {n: m.clone() for n, m in method.masks.items()}
    train_steps(tiny_net, opt, method, data[4:])
    assert torch.equal(tiny_net.fc2.bias, bias_before)  # no optimizer step on step 5
    assert any(not torch.equal(masks_before[n], m) for n, m in method.masks.items())
    assert_masks_hold(method)


def test_dense_gradient_is_summed_over_the_accumulation_window(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.0)
    method = RigL(tiny_net, opt, density=0.2, grad_accumulation=3, **KW)
    data = batches(5)
    grads = []
    for step, (inputs, targets) in enumerate(data, start=1):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tiny_net(inputs), targets).backward()
        if step >= 3:
            grads.append(tiny_net.fc1.weight.grad.clone())
        method.before_step()
        if step == 4:
            assert torch.allclose(method.dense_grads["fc1"], grads[0] + grads[1])
        if step == 5:  # captured before the update consumes it
            assert torch.allclose(method.dense_grads["fc1"], sum(grads))
        opt.step()
        method.after_step()
    assert method.dense_grads == {}


def resume_equivalence(cls, extra):
    data = batches(STEPS)

    def fresh():
        torch.manual_seed(0)
        model = TinyConvNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return model, opt, cls(model, opt, density=0.2, seed=7, **KW, **extra)

    model_a, opt_a, method_a = fresh()
    train_steps(model_a, opt_a, method_a, data)

    model_b, opt_b, method_b = fresh()
    train_steps(model_b, opt_b, method_b, data[:22])  # mid accumulation window of step 25
    saved = copy.deepcopy((model_b.state_dict(), opt_b.state_dict(), method_b.state_dict()))
    model_c, opt_c, method_c = fresh()
    model_c.load_state_dict(saved[0])
    opt_c.load_state_dict(saved[1])
    method_c.load_state_dict(saved[2])
    train_steps(model_c, opt_c, method_c, data[22:])
    for (name, a), c in zip(
        model_a.state_dict().items(), model_c.state_dict().values(), strict=True
    ):
        assert torch.equal(a, c), name
    for name in method_a.masks:
        assert torch.equal(method_a.masks[name], method_c.masks[name])
    metrics_a, metrics_c = method_a.metrics(), method_c.metrics()
    metrics_a.pop("update/time_ms")
    metrics_c.pop("update/time_ms")
    assert metrics_a == metrics_c


@pytest.mark.parametrize(
    ("cls", "extra"),
    [
        (SET, {}),
        (RigL, {"grad_accumulation": 4}),
        (SRigL, {"gamma_sal": 0.3}),
    ],
)
def test_state_round_trip_resumes_identically(cls, extra):
    resume_equivalence(cls, extra)


def test_dense_method_masks_nothing(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    method = Dense(tiny_net, opt, example_input=torch.zeros(1, 3, 8, 8))
    train_steps(tiny_net, opt, method, batches(3))
    metrics = method.metrics()
    assert method.masks == {}
    assert metrics["sparsity/masked_layers"] == 0.0
    assert metrics["flops/inference_rel"] == 1.0
    assert metrics["flops/train_rel"] == pytest.approx(1.0)


def test_flop_accounting_follows_the_rigl_paper(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    method = RigL(
        tiny_net,
        opt,
        density=0.2,
        example_input=torch.zeros(1, 3, 8, 8),
        total_steps=100,
        delta_t=5,
        t_end=1.0,
    )
    macs = method.macs
    assert macs["stem"] == 8 * 3 * 9 * 64  # weight numel * 8x8 output positions
    assert macs["fc2"] == 32 * 4
    train_steps(tiny_net, opt, method, batches(5))
    sparse, dense = method.mask_metrics.sparse_macs()
    # 4 steps of 3 f_S, the 5th needs the dense gradient: 2 f_S + f_D
    # (the topology changes after the 5th step, f_S is taken before it)
    assert method.macs is macs
    assert method.train_macs == pytest.approx(14 * sparse + dense, rel=1e-6)


def test_sparse_init_uses_the_sparse_fan_in(tiny_net):
    method = Static(tiny_net, density=0.1, distribution="uniform", sparse_init=True)
    weight = tiny_net.fc1.weight
    mask = method.masks["fc1"].bool()
    fan_in = mask.sum(dim=1, keepdim=True).float()
    normalised = (weight * torch.sqrt(fan_in / 2))[mask]
    assert normalised.std().item() == pytest.approx(1.0, abs=0.15)


def test_sparse_init_rule_grad_flow_draws_with_std_2_over_k(tiny_net):
    # the SRigL authors' grad_flow_init (calgaryml/condensed-sparsity@3052bb8
    # src/rigl_torch/utils/sparse_init.py): normal_(0, 2 / fan_in), a std of 2/k, not He's
    # sqrt(2/k); same generator draws as the default rule, so the two differ by the std alone
    he_net = copy.deepcopy(tiny_net)
    method = Static(
        tiny_net,
        density=0.1,
        distribution="uniform",
        sparse_init=True,
        sparse_init_rule="grad_flow",
    )
    Static(he_net, density=0.1, distribution="uniform", sparse_init=True)
    for name in ("stem", "fc1"):
        mask = method.masks[name].bool()
        k = mask.reshape(mask.shape[0], -1).sum(dim=1).float()
        k = k.view(-1, *[1] * (mask.dim() - 1))
        grad_flow = dict(tiny_net.named_modules())[name].weight.detach()
        he = dict(he_net.named_modules())[name].weight.detach()
        assert torch.allclose(grad_flow, he * torch.sqrt(2 / k), atol=1e-7)
        assert (grad_flow * k / 2)[mask].std().item() == pytest.approx(1.0, abs=0.15)
    with pytest.raises(ValueError, match="sparse_init_rule='xavier' is unknown"):
        Static(tiny_net, density=0.1, sparse_init=True, sparse_init_rule="xavier")


def test_grad_flow_std_is_zero_for_a_neuron_without_inputs():
    from sst.sparsity.initial import sparse_init_std

    k = torch.tensor([[0], [1], [8], [57]])
    assert sparse_init_std(k, "grad_flow").flatten().tolist() == pytest.approx(
        [0.0, 2.0, 0.25, 2 / 57]
    )
    assert sparse_init_std(k, "he").flatten().tolist() == pytest.approx(
        [2**0.5, 2**0.5, 0.5, (2 / 57) ** 0.5]
    )


def test_errors_name_the_setting(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"density=1\.5"):
        RigL(tiny_net, opt, density=1.5, total_steps=10)
    with pytest.raises(ValueError, match="3 input channels, which N:M with m=4 does not divide"):
        RigL(tiny_net, opt, density=0.5, total_steps=10, structure="nm")
    with pytest.raises(ValueError, match="does not match N:M 2:4"):
        RigL(tiny_net, opt, density=0.1, total_steps=10, structure="nm", exclude=["stem"])
    with pytest.raises(ValueError, match="constant fan-in of 0"):
        Static(tiny_net, opt, density=0.01, distribution="uniform", structure="constant_fanin")
    with pytest.raises(ValueError, match="include: 'layer9' matches no layer"):
        RigL(tiny_net, opt, density=0.1, total_steps=10, include=["layer9"])
    with pytest.raises(ValueError, match=r"exclude must be a list .* write \['fc'\]"):
        RigL(tiny_net, opt, density=0.1, total_steps=10, exclude="fc")  # not 'f' and 'c'
    with pytest.raises(ValueError, match=r"protected must be a list"):
        SRigL(tiny_net, opt, density=0.1, total_steps=10, protected="fc")
    with pytest.raises(ValueError, match=r"densities: 'stem': 'abc' is not a number"):
        Static(tiny_net, opt, density=0.1, distribution="explicit", densities={"stem": "abc"})
    two = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    with pytest.raises(ValueError, match="structure=nm keeps every candidate layer dense"):
        Static(two, None, density=0.5, structure="nm", dense_first=True, dense_last=True)
    adagrad = torch.optim.Adagrad(tiny_net.parameters(), initial_accumulator_value=0.1)
    with pytest.raises(ValueError, match=r"initial_accumulator_value=0\.1 is not supported"):
        RigL(tiny_net, adagrad, density=0.1, total_steps=10)
    with pytest.raises(ValueError, match="distribution='erx' is unknown"):
        RigL(tiny_net, opt, density=0.1, total_steps=10, distribution="erx")
    with pytest.raises(ValueError, match="structure='blocks' is unknown"):
        Static(tiny_net, opt, density=0.1, structure="blocks")
    with pytest.raises(ValueError, match="SRigL needs structure=constant_fanin"):
        SRigL(tiny_net, opt, density=0.1, total_steps=10, structure="unstructured")
    with pytest.raises(ValueError, match="alpha=2"):
        RigL(tiny_net, opt, density=0.1, total_steps=10, alpha=2)
    with pytest.raises(ValueError, match="optimizer LBFGS is not supported"):
        RigL(tiny_net, torch.optim.LBFGS(tiny_net.parameters()), density=0.1, total_steps=10)


def test_layer_selection_and_overrides(tiny_net):
    method = Static(
        tiny_net,
        density=0.2,
        dense_first=True,
        densities={"fc2": 0.5},
        layer_types=["Linear", "Conv2d"],
    )
    assert "stem" not in method.masks and method.layer_density["stem"] == 1.0
    assert method.layer_density["fc2"] == 0.5
    assert set(method.masks) == {"conv", "fc1", "fc2"}
    only_linear = Static(TinyConvNet(), density=0.2, include=[r"fc\d"])
    assert set(only_linear.candidates) == {"fc1", "fc2"}


def test_library_use_in_a_plain_loop_trains(tiny_net):
    """The README's three-line integration learns a separable task."""
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(256, 3, 8, 8, generator=gen)
    targets = (inputs.mean(dim=(1, 2, 3)) > 0).long()
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.05, momentum=0.9)
    method = SRigL(tiny_net, opt, density=0.3, total_steps=150, delta_t=10)
    for _step in range(150):
        idx = torch.randint(0, 256, (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(tiny_net(inputs[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        method.before_step()
        opt.step()
        method.after_step()
    accuracy = (tiny_net(inputs).argmax(1) == targets).float().mean().item()
    assert accuracy > 0.85
    assert_masks_hold(method)


def test_an_update_without_finite_gradients_is_skipped(tiny_net):
    """An fp16 overflow step (inf/NaN gradients) must not steer growth."""
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.0)
    method = RigL(tiny_net, opt, density=0.2, **KW)
    data = batches(5)
    train_steps(tiny_net, opt, method, data[:4])
    before = {n: m.clone() for n, m in method.masks.items()}
    inputs, targets = data[4]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(tiny_net(inputs), targets).backward()
    tiny_net.fc1.weight.grad[0, 0] = float("nan")
    method.before_step()
    method.after_step()  # step 5 is an update step
    assert all(torch.equal(before[n], m) for n, m in method.masks.items())
    assert method.metrics()["update/skipped_nonfinite"] == 1.0
    train_steps(tiny_net, opt, method, batches(5, seed=1))  # step 10 updates normally
    assert method.last_update["update/step"] == 10
    assert_masks_hold(method)


def test_no_sparse_layer_left_means_no_update(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    method = SRigL(tiny_net, opt, density=1.0, **KW)
    train_steps(tiny_net, opt, method, batches(6))
    assert method.masks == {} and method.metrics()["sparsity/masked_layers"] == 0.0


def test_existing_optimizer_state_is_masked_at_construction(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9)
    train_steps(tiny_net, opt, Dense(tiny_net, opt), batches(2))  # dense momentum everywhere
    method = Static(tiny_net, opt, density=0.3)
    assert_masks_hold(method)
    for name, weight in method.weights.items():
        momentum = opt.state[weight]["momentum_buffer"]
        assert torch.all(momentum[~method.masks[name].bool()] == 0), name
    train_steps(tiny_net, opt, method, batches(3))
    assert_masks_hold(method)


def test_a_layer_without_gradient_keeps_its_mask():
    torch.manual_seed(0)
    model = TinyConvNet()
    model.spare = torch.nn.Linear(8, 8)  # a candidate the forward pass never uses
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = RigL(model, opt, density=0.3, distribution="uniform", **KW)
    spare = method.masks["spare"].clone()
    train_steps(model, opt, method, batches(10))
    assert torch.equal(method.masks["spare"], spare)
    assert method.last_update["update/step"] == 10


def test_srigl_protects_the_output_layer_only_when_it_is_sparse(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    assert SRigL(tiny_net, opt, density=0.3, **KW).protected == {"fc2"}
    hidden_only = SRigL(tiny_net, opt, density=0.3, include=["conv", "fc1"], **KW)
    assert hidden_only.protected == set()
    assert SRigL(tiny_net, opt, density=0.3, protected=[], **KW).protected == set()


def test_kept_counts_are_exact_for_half_precision_weights():
    model = torch.nn.Sequential(torch.nn.Linear(1000, 700)).to(torch.bfloat16)
    method = Static(model, density=0.5, distribution="uniform")
    assert method.kept_counts == {"0": 350_000}
    half = torch.nn.Sequential(torch.nn.Linear(1000, 700)).half()
    assert Static(half, density=0.5, distribution="uniform").kept_counts == {"0": 350_000}


def test_nm_groups_run_along_input_channels_of_a_conv(tiny_net):
    method = Static(tiny_net, density=0.5, structure="nm", exclude=["stem"])
    mask = method.masks["conv"].bool()  # (16 out, 8 in, 3, 3)
    groups = mask.permute(0, 2, 3, 1).reshape(16, 3, 3, 2, 4)  # 4 consecutive channels
    assert torch.all(groups.sum(dim=-1) == 2)
    with pytest.raises(ValueError, match="'stem' has 3 input channels, which N:M with m=4"):
        Static(tiny_net, density=0.5, structure="nm")


def test_dense_keeps_the_initial_weights_under_a_presets_sparse_init(tiny_net):
    """The SRigL presets' Dense rows keep ``sparse_init: true, sparse_init_rule: grad_flow``:
    no weight is masked, so none is re-drawn, as in the authors' dense runs (no RigL
    scheduler, PyTorch's initialisation)."""
    before = {n: p.detach().clone() for n, p in tiny_net.named_parameters()}
    Dense(tiny_net, sparse_init=True, sparse_init_rule="grad_flow")
    for name, param in tiny_net.named_parameters():
        assert torch.equal(param, before[name]), name


def test_dense_accepts_a_shared_distribution_setting(tiny_net):
    assert Dense(tiny_net, distribution="erk").masks == {}


def assert_same_state(a, b, path="state"):
    if torch.is_tensor(a):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    else:
        assert a == b, path


def test_state_dict_is_a_snapshot_that_later_training_leaves_unchanged():
    data = batches(30, seed=4)

    def fresh():
        torch.manual_seed(0)
        model = TinyConvNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, SRigL(model, opt, density=0.2, grad_accumulation=4, **KW)

    model, opt, method = fresh()
    train_steps(model, opt, method, data[:22])  # dense gradients are mid window
    state = method.state_dict()
    assert state["dense_grads"]
    frozen = copy.deepcopy(state)
    train_steps(model, opt, method, data[22:])
    assert_same_state(state, frozen)

    model_b, opt_b, method_b = fresh()
    method_b.load_state_dict(state)
    train_steps(model_b, opt_b, method_b, data[22:])
    assert_same_state(state, frozen)


def test_capture_keeps_finite_fp16_gradients_whose_norm_exceeds_fp16_range():
    layer = torch.nn.Linear(256, 256).half()
    method = RigL(layer, None, density=0.5, total_steps=10, delta_t=1)
    layer.weight.grad = torch.full_like(layer.weight, 300.0)  # norm 76800 > 65504
    method.before_step()
    method.after_step()
    assert method.skipped_updates == 0
    assert "update/drop_fraction" in method.metrics()


def test_replacing_a_masked_weight_after_construction_fails_loudly(tiny_net):
    method = Static(tiny_net, density=0.3)
    fresh = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    tiny_net.load_state_dict(fresh, assign=True)
    with pytest.raises(RuntimeError, match="was replaced after the sparsity method was built"):
        method.metrics()


def test_a_schedule_with_no_update_says_so(tiny_net, caplog):
    """delta_t at or past t_end * total_steps: no mask update would ever run, silently
    a static run; the method warns."""
    with caplog.at_level("WARNING", logger="sst"):
        RigL(tiny_net, density=0.5, total_steps=30, delta_t=100)
    assert "never updates its masks" in caplog.text and "t_end * total_steps = 22" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sst"):
        RigL(tiny_net, density=0.5, total_steps=300, delta_t=100)
    assert "never updates" not in caplog.text
