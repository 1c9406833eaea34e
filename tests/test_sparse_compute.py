"""Training in condensed form (``trainer.sparse_compute``, ``sst.condensed.training``) trains
the run masked-dense training trains, up to summation order: the same masks at every update,
the same losses at every step, the same accuracy; checkpoints keep their format and a run
resumes with the option switched either way."""

import pytest
import torch
from conftest import TinyConvNet, batches
from runs import InterruptAt, compose_run, read_metrics

from sst.condensed.training import SparseCompute
from sst.config.keys import ConfigError
from sst.engine.hooks import Hook
from sst.engine.signals import Preempted
from sst.launch.build import build
from sst.sparsity import GMP, RigL, SRigL, TargetedDropout

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS_RTOL = 1e-4
MASK_AGREEMENT = 0.999


class MaskLog(Hook):
    """Records the masks after every topology update of the loop's sparsity method."""

    name = "mask_log"
    has_state = False

    def __init__(self, method, form=None) -> None:
        self.method, self.form = method, form
        self.updates: list[dict[str, torch.Tensor]] = []
        self.condensed_steps = 0

    def after_optimizer_step(self) -> None:
        self.condensed_steps += int(self.form is not None and self.form.is_condensed)
        if self.method.last_update.get("update/step") == float(self.method.step):
            self.updates.append({n: m.bool().clone() for n, m in self.method.masks.items()})


def assert_masks_agree(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for masks_a, masks_b in zip(a, b, strict=True):
        same = sum(int((masks_a[n] == masks_b[n]).sum()) for n in masks_a)
        total = sum(m.numel() for m in masks_a.values())
        assert same / total >= MASK_AGREEMENT


def assert_losses_agree(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) and a
    for step, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        assert abs(x - y) <= LOSS_RTOL * abs(x), (step, x, y)


# ----------------------------------------------------------------------------- the library
def learnable_batches(n: int, seed: int, batch: int = 32) -> list[tuple]:
    """Images whose class is the argmax of a fixed random projection: a task the CNN
    learns, so that summation-order differences shrink instead of growing as they do on
    random labels."""
    gen = torch.Generator().manual_seed(seed)
    projection = torch.randn(3 * 8 * 8, 4, generator=torch.Generator().manual_seed(7))
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, 8, 8, generator=gen)
        out.append((x, (x.flatten(1) @ projection).argmax(1)))
    return out


def library_run(cls, mode: str, steps: int, optimizer: str = "sgd", **kw):
    """A small CNN (two convs, BatchNorm, two linears) trained by ``cls`` in a plain loop
    with ``SparseCompute``; returns (losses, masks at each update, test correct, compute)."""
    torch.manual_seed(0)
    model = TinyConvNet()
    # no bias before BatchNorm, as in a ResNet: its gradient is zero up to rounding, which
    # Adam's normalisation turns into full-size steps that differ with the summation order
    model.conv.register_parameter("bias", None)
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.001, weight_decay=0.05)
    method = cls(model, opt, density=0.2, total_steps=steps, **kw)
    compute = SparseCompute(model, opt, method.mask_set, mode=mode)
    losses, updates = [], []
    for step, (x, y) in enumerate(learnable_batches(steps, seed=1), start=1):
        compute.expand() if method.dense_step(step) else compute.condense()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        method.before_step()
        opt.step()
        method.after_step()
        losses.append(loss.item())
        if method.dense_step(step):  # the steps that may change the masks
            updates.append({n: m.bool().clone() for n, m in method.masks.items()})
    compute.expand()
    x, y = learnable_batches(1, seed=9, batch=256)[0]
    model.eval()
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    return losses, updates, correct, compute


# AdamW over 100 steps: Adam divides by sqrt(v), so a summation-order difference in a
# near-zero gradient (a weight grown at 0) becomes a full-size step difference; over 300
# steps it reaches 3e-3 relative in the loss (masks still >= 99.8% equal)
@pytest.mark.parametrize(
    ("cls", "optimizer", "steps"),
    [(SRigL, "sgd", 300), (RigL, "sgd", 300), (RigL, "adamw", 100)],
    ids=["srigl-sgd", "rigl-sgd", "rigl-adamw"],
)
def test_a_small_cnn_trains_the_same_in_condensed_form(cls, optimizer, steps):
    off = library_run(cls, "off", steps, optimizer, delta_t=20)
    on = library_run(cls, "on", steps, optimizer, delta_t=20)
    assert on[3].chosen  # every masked layer trained condensed between updates
    assert_losses_agree(off[0], on[0])
    assert_masks_agree(off[1], on[1])
    assert abs(off[2] - on[2]) <= 1


def test_gmp_expands_at_its_prune_steps_and_trains_the_same():
    off = library_run(GMP, "off", 60, delta_t=10)
    on = library_run(GMP, "on", 60, delta_t=10)
    assert on[3].chosen
    assert_losses_agree(off[0], on[0])
    assert_masks_agree(off[1], on[1])


def test_condensed_layers_hold_the_optimizer_state_of_kept_weights_only():
    torch.manual_seed(0)
    model = TinyConvNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    method = RigL(model, opt, density=0.2, total_steps=100, delta_t=50)
    compute = SparseCompute(model, opt, method.mask_set, mode="on")
    x, y = batches(1)[0]
    for _ in range(2):  # dense state first, then condensed
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        method.after_step()
        compute.condense()
    weight = method.weights["fc1"]
    values = model.fc1.condensed_values
    assert weight not in opt.state and all(weight is not p for p in opt.param_groups[0]["params"])
    assert opt.state[values]["exp_avg"].shape == (method.kept_counts["fc1"],)
    assert weight.untyped_storage().nbytes() <= 4  # the dense storage is released
    with pytest.raises(RuntimeError, match="condensed form; expand them"):
        method.mask_set.set({n: m.bool() for n, m in method.masks.items()})
    compute.expand()
    mask = method.masks["fc1"].bool()
    assert opt.state[weight]["exp_avg"].shape == weight.shape
    assert torch.all(opt.state[weight]["exp_avg"][~mask] == 0)
    assert torch.equal(weight[mask], values.detach())


def test_a_layout_is_rebuilt_only_when_its_mask_changed():
    """A checkpoint expands and condenses again under the same masks: the layouts are kept;
    a mask update (a new mask tensor) or an in-place change to a mask rebuilds them."""
    torch.manual_seed(0)
    model = TinyConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = RigL(model, opt, density=0.2, total_steps=100, delta_t=50)
    compute = SparseCompute(model, opt, method.mask_set, mode="on")
    compute.condense()
    first = {n: e.layout for n, e in compute.condensed.items()}
    compute.expand()
    compute.condense()
    assert all(compute.condensed[n].layout is first[n] for n in first)
    compute.expand()
    mask = method.masks["fc1"].bool()
    kept = mask.nonzero()[0]
    mask[kept[0], kept[1]] = False  # one weight fewer
    method.mask_set.set({"fc1": mask})
    with torch.no_grad():
        method.masks["conv"][0].fill_(1.0)  # in place: the tensor's version moves
    compute.condense()
    assert compute.condensed["fc1"].layout is not first["fc1"]
    assert compute.condensed["fc1"].layout.nnz == first["fc1"].nnz - 1
    assert compute.condensed["conv"].layout is not first["conv"]
    assert torch.equal(compute.condensed["conv"].layout.mask(), method.masks["conv"].flatten(1))
    assert compute.condensed["stem"].layout is first["stem"]


def test_targeted_dropout_stays_masked_dense():
    model = TinyConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = TargetedDropout(model, opt, density=0.3, total_steps=10)
    with pytest.raises(ValueError, match="masks weights inside the forward pass"):
        SparseCompute(model, opt, method.mask_set, mode="on")
    auto = SparseCompute(model, opt, method.mask_set, mode="auto")
    auto.condense()
    assert not auto.is_condensed


def test_auto_times_every_layer_on_its_real_input_and_keeps_the_faster_form():
    torch.manual_seed(0)
    model = TinyConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = SRigL(model, opt, density=0.1, total_steps=100, delta_t=50)
    compute = SparseCompute(model, opt, method.mask_set, mode="auto", repeats=3)
    compute.condense()  # no forward pass seen yet: nothing to measure on
    assert not compute.is_condensed
    model(batches(1)[0][0])
    compute.condense()
    assert set(compute.timings) == set(compute.eligible)
    faster = [n for n, (dense, sparse) in compute.timings.items() if sparse < dense]
    assert compute.chosen == faster
    assert set(compute.condensed) == set(faster)


def test_auto_decides_on_the_layers_a_forward_pass_called_and_keeps_the_rest_dense(caplog):
    """A masked layer outside the forward path (an unused head) used to hold ``auto``
    masked-dense for the whole run: the choice waited for every layer's input shape."""
    torch.manual_seed(0)
    model = TinyConvNet()
    model.unused_head = torch.nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = SRigL(model, opt, density=0.1, total_steps=100, delta_t=50)
    compute = SparseCompute(model, opt, method.mask_set, mode="auto", repeats=1)
    assert "unused_head" in compute.eligible
    model(batches(1)[0][0])
    with caplog.at_level("INFO", logger="sst"):
        compute.condense()
    assert "unused_head" not in compute.timings
    assert set(compute.timings) == set(compute.eligible) - {"unused_head"}
    assert "not called, kept masked-dense: unused_head" in caplog.text
    state = compute.state()
    assert state["mode"] == "auto" and state["condensed_layers"] == compute.chosen
    assert set(state["timings_ms"]) == set(compute.timings)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        SparseCompute(model, opt, method.mask_set, mode="auto", repeats=0)


# ----------------------------------------------------------------------------- the loop
DEFAULT_300 = ["logger=none", "trainer.max_steps=300", "trainer.log_every=1"]
DEFAULT_300 += ["trainer.progress_bar=false", "sparsity.delta_t=25"]


def loop_run(tmp_path, options: list[str], hooks=()):
    cfg, run_dir, choices = compose_run(options, tmp_path)
    loop = build(cfg, run_dir, choices)
    (sparsity,) = [h for h in loop.hooks if h.name == "sparsity"]
    form = [h.form for h in loop.hooks if h.name == "sparse_compute"]
    log = MaskLog(sparsity.method, form[0] if form else None)
    loop.hooks.extend([log, *hooks])
    summary = loop.fit()
    return summary, read_metrics(run_dir), log, run_dir


def train_losses(records: list[dict]) -> list[float]:
    return [r["train/loss"] for r in records if "train/loss" in r]


def test_the_default_run_trains_the_same_in_condensed_form(tmp_path):
    off = loop_run(tmp_path / "off", DEFAULT_300)
    on = loop_run(tmp_path / "on", [*DEFAULT_300, "trainer.sparse_compute=on"])
    assert on[3].name == off[3].name  # the option is not part of the run's identity
    assert len(off[2].updates) == 8  # updates at 25, 50, ..., 200 (t_end = 0.75 x 300)
    # every step but the 8 update steps trained condensed (SRigL reads dense gradients there)
    assert on[2].condensed_steps == 300 - 8 and off[2].condensed_steps == 0
    assert_losses_agree(train_losses(off[1]), train_losses(on[1]))
    assert_masks_agree(off[2].updates, on[2].updates)
    tests = 360  # digits' test split
    assert abs(off[0]["final_test_acc"] - on[0]["final_test_acc"]) <= 1 / tests + 1e-9
    state = torch.load(on[3] / "checkpoints/last.pt", weights_only=True)
    for name, mask in state["sparsity"]["masks"].items():  # today's format: dense, masked
        assert state["model"][f"{name}.weight"].shape == mask.shape
        assert "condensed_values" not in str(list(state["model"]))


def test_lr_rewinding_trains_its_rounds_in_condensed_form(tmp_path):
    options = ["logger=none", "sparsity=lr_rewinding", "sparsity.density=0.5", "seed=1"]
    options += ["trainer.epochs=3", "trainer.log_every=1", "trainer.progress_bar=false"]
    off = loop_run(tmp_path / "off", options)
    on = loop_run(tmp_path / "on", [*options, "trainer.sparse_compute=on"])
    steps = len(train_losses(on[1]))
    # five stages of equal length: the dense one, then 4 rounds (0.8^4 <= 1.01 x 0.5); only
    # the dense stage trains masked-dense
    assert on[0]["sparsity_masked_layers"] == pytest.approx(0.5, abs=0.01)
    assert on[2].condensed_steps == steps * 4 // 5
    assert_losses_agree(train_losses(off[1]), train_losses(on[1]))
    assert abs(off[0]["final_test_acc"] - on[0]["final_test_acc"]) <= 1 / 360 + 1e-9


@pytest.mark.parametrize(("first", "second"), [("on", "off"), ("off", "on")])
def test_a_run_resumes_with_the_option_switched(tmp_path, first, second):
    options = [*DEFAULT_300[:1], "trainer.max_steps=60", "trainer.log_every=1"]
    options += ["trainer.progress_bar=false", "sparsity.delta_t=10"]
    whole = loop_run(tmp_path / "whole", options)
    with pytest.raises(Preempted):
        loop_run(tmp_path / "cut", [*options, f"trainer.sparse_compute={first}"], [InterruptAt(27)])
    resumed = loop_run(tmp_path / "cut", [*options, f"trainer.sparse_compute={second}"])
    assert_losses_agree(train_losses(whole[1]), train_losses(resumed[1]))
    assert abs(whole[0]["final_test_acc"] - resumed[0]["final_test_acc"]) <= 1 / 360 + 1e-9


def test_a_bad_value_fails_early_naming_the_allowed_values(tmp_path):
    cfg, run_dir, choices = compose_run(["logger=none", "trainer.sparse_compute=fast"], tmp_path)
    with pytest.raises(ConfigError, match=r"sparse_compute='fast' is unknown: allowed values"):
        build(cfg, run_dir, choices)
