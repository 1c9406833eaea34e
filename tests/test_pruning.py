"""Gradual magnitude pruning and one-shot pruning: the cubic schedule, exact final sparsity
for every scope and structure, masks fixed after t_end, a single prune at the configured
step, starting from a finished dense run."""

import itertools
import json
import math

import pytest
import torch
from conftest import TinyConvNet, batches, train_steps
from omegaconf import OmegaConf

import sst.models
from sst.config import ConfigError
from sst.launch.build import run_weights
from sst.sparsity import GMP, OneShot, SparsityMethod
from sst.sparsity.schedules import cubic_sparsity
from sst.sparsity.structure import Structure, layer_budget

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models


# ----------------------------------------------------------------------------- the schedule


def test_cubic_schedule_at_start_middle_and_end():
    assert cubic_sparsity(10, 0.1, 0.9, 10, 30) == 0.1
    assert cubic_sparsity(20, 0.1, 0.9, 10, 30) == pytest.approx(0.9 - 0.8 / 8)
    assert cubic_sparsity(30, 0.1, 0.9, 10, 30) == 0.9
    assert cubic_sparsity(0, 0.1, 0.9, 10, 30) == 0.1  # before t_0: s_i
    values = [cubic_sparsity(t, 0.0, 0.9, 10, 30) for t in range(10, 31)]
    assert values == sorted(values)  # never decreasing
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert steps == sorted(steps, reverse=True)  # fast first, slow at the end


@pytest.mark.parametrize(("total", "delta_t"), [(37, 7), (50, 100), (23, 1), (41, 13)])
def test_gmp_prunes_on_delta_t_and_always_at_t_end(total, delta_t):
    torch.manual_seed(0)
    model = TinyConvNet()
    method = GMP(model, None, density=0.2, total_steps=total, delta_t=delta_t)
    prunes = [s for s in range(1, total + 1) if method.is_prune_step(s)]
    t0, t_end = int(0.25 * total), int(0.75 * total)
    assert prunes[-1] == t_end
    assert prunes[:-1] == list(range(t0, t_end, delta_t))[: len(prunes) - 1]
    assert method.target_sparsity(t_end) == 0.8


# ----------------------------------------------------------------------------- GMP runs
SCOPES = [
    {"distribution": "uniform"},
    {"distribution": "erk"},
    {"distribution": "global_magnitude"},
    {"distribution": "uniform", "structure": "constant_fanin"},
    {"distribution": "global_magnitude", "structure": "constant_fanin"},
    {"distribution": "uniform", "structure": "nm", "exclude": ["stem"], "density": 0.5},
]


def scope_id(extra):
    return "-".join(str(v if not isinstance(v, list) else "x") for v in extra.values())


def masked_sparsity(method) -> float:
    return method.metrics()["sparsity/masked_layers"]


@pytest.mark.parametrize("extra", SCOPES, ids=scope_id)
def test_gmp_reaches_and_keeps_the_final_sparsity(extra):
    torch.manual_seed(0)
    model = TinyConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    kw = {"density": 0.2, **extra}
    method = GMP(model, opt, total_steps=25, delta_t=3, **kw)
    structure = method.structure
    seen, final_masks = [], {}

    def check(m):
        sparsity = masked_sparsity(m)
        seen.append(sparsity)
        for name, weight in m.weights.items():
            mask = m.masks[name].bool()
            assert torch.all(weight[~mask] == 0), name
            rows = structure.units(mask).sum(dim=1)
            if structure.kind == "constant_fanin":  # one fan-in for every neuron
                assert torch.all(rows == rows[0]), (m.step, name)
            if structure.kind == "nm":  # at most the share of the current density
                share = math.ceil(4 * (1 - m.last_update.get("prune/target_sparsity", 0)))
                assert int(rows.max()) <= max(share, 2), (m.step, name)
        if m.step == m.t_end:
            final_masks.update({n: k.clone() for n, k in m.masks.items()})

    train_steps(model, opt, method, batches(25), check=check)
    assert seen[: method.t_start - 1] == [0.0] * (method.t_start - 1)  # dense before t_0
    assert seen == sorted(seen)  # pruning only removes
    assert all(torch.equal(final_masks[n], m) for n, m in method.masks.items())  # fixed
    if structure.kind == "unstructured" and extra["distribution"] != "global_magnitude":
        for name, weight in method.weights.items():
            budget = layer_budget(weight.numel(), method.layer_density[name])
            assert method.kept_counts[name] == budget, name
        assert seen[-1] == pytest.approx(0.8, abs=1e-3)
    elif structure.kind == "nm":
        for name in method.weights:
            structure.verify(method.masks[name].bool(), 2)
    else:  # constant fan-in rounds every layer's budget down to a multiple of n_out
        assert 0.8 <= seen[-1] <= 0.81
    if extra["distribution"] == "global_magnitude" and structure.kind == "unstructured":
        assert seen[-1] == pytest.approx(0.8, abs=2e-4)


def test_gmp_global_scope_is_one_threshold():
    """With lr 0 the weights never move: the kept set is the global top |w| at the start."""
    torch.manual_seed(0)
    model = TinyConvNet()
    start = torch.cat([p.detach().abs().flatten() for p in model.parameters() if p.dim() > 1])
    method = GMP(
        model, None, density=0.3, total_steps=8, delta_t=1, distribution="global_magnitude"
    )
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.0), method, batches(8))
    kept = torch.cat(
        [
            w[m.bool()].abs()
            for w, m in zip(method.weights.values(), method.masks.values(), strict=True)
        ]
    )
    assert kept.numel() == layer_budget(start.numel(), 0.3)
    assert kept.min() == torch.topk(start, kept.numel()).values.min()


def test_gmp_starts_at_s_init():
    torch.manual_seed(0)
    method = GMP(
        TinyConvNet(), None, density=0.2, total_steps=40, s_init=0.4, distribution="uniform"
    )
    assert masked_sparsity(method) == pytest.approx(0.4, abs=1e-3)


def test_first_masks_are_decided_over_a_mask_set_that_keeps_every_weight():
    """The first masks come from the policy once the method's state exists (every weight
    kept), pruned from the starting weights under both scopes."""
    seen = {}

    class Probe(GMP):
        def initial_masks(self):
            seen.update(self.mask_set.kept_counts())
            return super().initial_masks()

    for distribution in ("uniform", "global_magnitude"):
        seen.clear()
        torch.manual_seed(0)
        model = TinyConvNet()
        start = {n: w.detach().clone() for n, w in model.named_parameters()}
        method = Probe(
            model, None, density=0.2, total_steps=40, s_init=0.4, distribution=distribution
        )
        assert seen == {n: w.numel() for n, w in method.weights.items()}
        assert masked_sparsity(method) == pytest.approx(0.4, abs=1e-2)
        for name, weight in method.weights.items():
            source = start[f"{name}.weight"]
            mask = method.masks[name].bool()
            assert torch.equal(weight[mask], source[mask]), name
        # the ever-active sets start from the first masks, not from the dense start
        assert method.metrics()["itop_rate"] == pytest.approx(1 - masked_sparsity(method))


def test_only_oneshot_reads_run_weights():
    assert SparsityMethod.RUN_WEIGHTS == ()
    assert OneShot.RUN_WEIGHTS == ("dense_run",)
    assert GMP.RUN_WEIGHTS == ()


def test_gmp_in_a_plain_loop():
    """The README's library use: GMP like RigL, before_step / after_step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = GMP(model, opt, density=0.1, total_steps=100, delta_t=10)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(
            model(torch.randn(32, 64)), torch.randint(0, 10, (32,))
        )
        opt.zero_grad()
        loss.backward()
        method.before_step()
        opt.step()
        method.after_step()
    assert method.metrics()["sparsity/masked_layers"] == pytest.approx(0.9, abs=1e-3)


def test_gmp_errors_name_the_setting(tiny_net):
    with pytest.raises(ValueError, match=r"t_start=0\.8 and t_end=0\.5"):
        GMP(tiny_net, None, density=0.2, total_steps=100, t_start=0.8, t_end=0.5)
    with pytest.raises(ValueError, match=r"s_init=0\.9 is out of range"):
        GMP(tiny_net, None, density=0.2, total_steps=100, s_init=0.9)
    with pytest.raises(
        ValueError, match=r"global_magnitude .* cannot be combined with structure=nm"
    ):
        GMP(
            tiny_net,
            None,
            density=0.5,
            total_steps=100,
            structure="nm",
            distribution="global_magnitude",
            exclude=["stem"],
        )
    with pytest.raises(ValueError, match="delta_t=0"):
        GMP(tiny_net, None, density=0.2, total_steps=100, delta_t=0)


# ----------------------------------------------------------------------------- structures
def test_mask_at_density_under_nm_caps_every_group():
    structure = Structure("nm", 2, 4)
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 8.0, 7.0, 6.0, 5.0]])
    keep = structure.mask_at_density(scores, 0.75)  # 6 of 8, at most 3 per group
    assert keep.tolist() == [[True, True, True, False, True, True, True, False]]
    keep = structure.mask_at_density(scores, 0.625)  # 5 of 8: the 5th is the best 3rd
    assert keep.tolist() == [[True, True, False, False, True, True, True, False]]
    keep = structure.mask_at_density(scores, 0.5)
    assert keep.tolist() == [[True, True, False, False, True, True, False, False]]
    with pytest.raises(ValueError, match="below N:M 2:4"):
        structure.mask_at_density(scores, 0.25)


def test_mask_at_density_under_constant_fanin_gives_every_neuron_k():
    scores = torch.arange(24.0).reshape(3, 8)
    keep = Structure("constant_fanin").mask_at_density(scores, 0.5)
    assert keep.sum(dim=1).tolist() == [4, 4, 4]
    assert keep[:, 4:].all()


# ----------------------------------------------------------------------------- one-shot
def test_oneshot_prunes_once_at_the_configured_step(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.05, momentum=0.9)
    method = OneShot(tiny_net, opt, density=0.1, total_steps=20, prune_at=0.4)
    history = []
    train_steps(
        tiny_net,
        opt,
        method,
        batches(20),
        check=lambda m: history.append((masked_sparsity(m), dict(m.masks))),
    )
    sparsities = [s for s, _ in history]
    assert sparsities[:7] == [0.0] * 7
    assert sparsities[7:] == [pytest.approx(0.9, abs=1e-3)] * 13  # after step 8
    after = history[7][1]
    assert all(torch.equal(after[n], m) for n, m in method.masks.items())
    assert method.last_update["prune/step"] == 8


def test_global_pruning_masks_a_layer_whose_start_weights_all_pass_the_threshold():
    """One global |w| threshold decides at the prune, with the weights then: a layer whose
    initial weights would all be kept at the target density is masked too, so that the
    prune can reach it (it stayed dense, and the model's density above the target)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Linear(4, 64))
    with torch.no_grad():
        model[0].weight.fill_(1.0)  # every weight above any threshold at the start
    method = OneShot(
        model, None, density=0.1, total_steps=10, prune_at=0.5, distribution="global_magnitude"
    )
    assert set(method.masks) == {"0", "1"}
    with torch.no_grad():
        model[0].weight.fill_(1e-6)  # training made it the smallest layer
    for _ in range(10):
        method.before_step()
        method.after_step()
    # the budget, 26 weights, goes to layer 1; layer 0 keeps the one weight every layer keeps
    assert int(method.masks["1"].sum()) == int(0.1 * (4 + 4 * 64))
    assert int(method.masks["0"].sum()) == 1


def test_oneshot_at_zero_prunes_before_the_first_step(tiny_net):
    method = OneShot(
        tiny_net,
        None,
        density=0.25,
        total_steps=10,
        prune_at=0.0,
        distribution="global_magnitude",
        structure="constant_fanin",
    )
    assert masked_sparsity(method) == pytest.approx(0.75, abs=0.01)


def dense_run_folder(path, model, meta_model):
    (path / "checkpoints").mkdir(parents=True)
    meta = {"model": meta_model, "num_classes": 10, "input_shape": [1, 8, 8]}
    torch.save(
        {"model": model.state_dict(), "model_meta": meta, "step": 5},
        path / "checkpoints" / "last.pt",
    )
    (path / "summary.json").write_text(json.dumps({"finished": True, "final_test_acc": 90.0}))
    (path / "config.json").write_text("{}")
    return path


def test_oneshot_starts_from_a_finished_dense_run(tmp_path):
    torch.manual_seed(1)
    trained = sst.models.mlp(10, (1, 8, 8), hidden=[32])
    run = dense_run_folder(
        tmp_path / "dense", trained, {"_target_": "sst.models.mlp", "hidden": [32]}
    )
    torch.manual_seed(2)
    model = sst.models.mlp(10, (1, 8, 8), hidden=[32])
    settings = OmegaConf.create({"_target_": "sst.sparsity.OneShot", "dense_run": str(run)})
    weights = run_weights(settings)  # what sst-train reads from the folder
    method = OneShot(
        model,
        None,
        density=0.5,
        total_steps=10,
        prune_at=0.0,
        distribution="uniform",
        **weights,
    )
    for name, weight in method.weights.items():
        source = dict(trained.named_modules())[name].weight
        mask = method.masks[name].bool()
        assert torch.equal(weight[mask], source[mask])  # the dense run's weights ...
        assert source[mask].abs().min() >= source[~mask].abs().max()  # ... pruned by |w|
    missing = OmegaConf.create({"_target_": "sst.sparsity.OneShot", "dense_run": "nope"})
    with pytest.raises(ConfigError, match=r"sparsity.dense_run='nope'"):
        run_weights(missing)
    with pytest.raises(ValueError, match=r"dense_run=.*state dict"):
        OneShot(model, None, density=0.5, total_steps=10, dense_run=str(run))
    other = dense_run_folder(
        tmp_path / "wide",
        sst.models.mlp(10, (1, 8, 8), hidden=[16]),
        {"_target_": "sst.models.mlp", "hidden": [16]},
    )
    settings.dense_run = str(other)
    with pytest.raises(ValueError, match=r"(?s)dense_run.*size mismatch"):
        OneShot(model, None, density=0.5, total_steps=10, **run_weights(settings))


# ----------------------------------------------------------------------------- ASP's layers


def test_asp_2to4_prunes_only_the_layers_nvidia_asp_prunes():
    # NVIDIA/apex@6424da3 apex/contrib/sparsity/asp.py add_sparse_attributes: a weight with
    # size(0) % 8 != 0 or size(1) % 16 != 0 is skipped (dense); for a conv size(1) is its
    # input channels. Before, sst pruned every layer whose inputs 4 divides.
    from torch import nn

    from sst.config.directory import CONFIG_DIR
    from sst.sparsity import LRRewinding

    model = nn.Sequential(
        nn.Conv2d(16, 32, 3),  # pruned: 32 % 8, 16 % 16
        nn.Conv2d(32, 20, 1),  # skipped: 20 outputs
        nn.Conv2d(20, 32, 1),  # skipped: 20 input channels (4 divides them)
        nn.Flatten(),
        nn.Linear(32, 16),  # pruned
        nn.Linear(16, 10),  # skipped: the 10-class output layer
    )
    config = OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/sparsity/asp_2to4.yaml"))
    del config["_target_"]
    assert config["asp_layers"] is True
    method = LRRewinding(model, None, **config, total_steps=1)
    assert list(method.weights) == ["0", "4"]
    assert list(method.candidates) == ["0", "4"]
    library = LRRewinding(model, None, **{**config, "asp_layers": False}, total_steps=1)
    assert list(library.weights) == ["0", "1", "2", "4", "5"]  # the option is off by default
