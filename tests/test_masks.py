"""One masking pass a step: masking only the weights after the optimizer step (and zeroing
the state of regrown weights at an update) trains bit for bit what masking the gradients too
trains, for every kept weight and its optimizer state."""

import pytest
import torch
from conftest import TinyConvNet, batches
from runs import compose_run

from sst.launch.build import build
from sst.sparsity import GMP, SET, RigL, SRigL, TargetedDropout

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 16
KW = {"total_steps": STEPS, "delta_t": 3, "t_end": 0.75}
OPTIMIZERS = {
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    ),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}
METHODS = {
    "rigl": lambda m, o: RigL(m, o, density=0.2, **KW),
    "srigl": lambda m, o: SRigL(m, o, density=0.2, **KW),
    "set": lambda m, o: SET(m, o, density=0.2, **KW),
    "gmp": lambda m, o: GMP(m, o, density=0.2, total_steps=STEPS, delta_t=3),
    "targeted_dropout": lambda m, o: TargetedDropout(m, o, density=0.3, total_steps=STEPS),
}


def run(method_name: str, optim_name: str, mask_grads: bool):
    torch.manual_seed(0)
    model = TinyConvNet()
    optimizer = OPTIMIZERS[optim_name](model.parameters())
    method = METHODS[method_name](model, optimizer)
    method.mask_set.mask_grads = mask_grads
    return model, optimizer, method


def one_step(model, optimizer, method, inputs, targets) -> None:
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    method.before_step()
    optimizer.step()
    method.after_step()


@pytest.mark.parametrize("optim_name", list(OPTIMIZERS))
@pytest.mark.parametrize("method_name", list(METHODS))
def test_one_pass_keeps_weights_and_optimizer_state_of_kept_weights_exact(method_name, optim_name):
    torch.manual_seed(0)
    two = run(method_name, optim_name, mask_grads=True)  # grad *= mask and weight *= mask
    one = run(method_name, optim_name, mask_grads=False)  # weight *= mask only
    changes = 0
    for inputs, targets in batches(STEPS, seed=3):
        before = {n: m.clone() for n, m in one[2].masks.items()}
        torch.manual_seed(1)  # targeted dropout draws its forward masks from torch's RNG
        one_step(*two, inputs, targets)
        torch.manual_seed(1)
        one_step(*one, inputs, targets)
        ref, new = two[2], one[2]
        for name, weight in new.weights.items():
            mask = new.masks[name].bool()
            assert torch.equal(mask, ref.masks[name].bool()), name
            assert torch.equal(weight, ref.weights[name]), name
            assert torch.all(weight[~mask] == 0), name
            grown = mask & ~before[name].bool()
            changes += int(grown.sum())
            state, ref_state = one[1].state[weight], two[1].state[ref.weights[name]]
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == weight.shape:
                    assert torch.equal(value[mask], ref_state[key][mask]), (name, key)
                    if step_updated(new):  # a regrown weight starts with zero state
                        assert torch.all(value[grown] == 0), (name, key)
                else:
                    assert torch.equal(torch.as_tensor(value), torch.as_tensor(ref_state[key]))
    for key in ("rigl", "srigl", "set"):
        if method_name == key:
            assert changes > 0  # the run went through topology updates


def step_updated(method) -> bool:
    return method.last_update.get("update/step") == float(method.step)


def test_saved_optimizer_state_is_zero_at_pruned_weights_as_before():
    """The gradients of pruned weights move their (unread) optimizer state; the method's
    state_dict zeroes it, so a checkpoint holds the state that masked gradients give."""
    model, optimizer, method = run("rigl", "adam", mask_grads=False)
    for inputs, targets in batches(5, seed=2):  # step 6 would update (and zero it)
        one_step(model, optimizer, method, inputs, targets)
    weight, mask = method.weights["fc1"], method.masks["fc1"].bool()
    assert optimizer.state[weight]["exp_avg"][~mask].abs().sum() > 0
    method.state_dict()
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.all(optimizer.state[weight][key][~mask] == 0), key


def test_gradient_masking_is_kept_for_global_norm_clipping():
    """With mask_grads, the gradients of pruned weights are zero before the optimizer step
    (what clipping by the global norm must see); without it they are left as computed."""
    for mask_grads in (True, False):
        model, _, method = run("srigl", "sgd_nesterov_wd", mask_grads=mask_grads)
        inputs, targets = batches(1)[0]
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        method.before_step()
        grad, mask = method.weights["fc1"].grad, method.masks["fc1"].bool()
        assert bool(torch.all(grad[~mask] == 0)) is mask_grads


@pytest.mark.parametrize(("clip", "masked"), [("1.0", True), ("null", False)])
def test_the_loop_masks_gradients_only_when_it_clips_them(tmp_path, clip, masked):
    cfg, run_dir, choices = compose_run(
        ["sparsity=srigl", f"trainer.grad_clip={clip}", "logger.kind=none"], tmp_path
    )
    loop = build(cfg, run_dir, choices)
    (hook,) = [h for h in loop.hooks if h.name == "sparsity"]
    assert hook.method.mask_set.mask_grads is masked
