"""The paper presets in ``conf/experiment/``: each composes, sweeps the paper's table, carries
the paper's settings, and builds its sparsity method.

Every ``conf/experiment/*.yaml`` is picked up; a new preset fails ``test_presets_are_known``
until its table and key settings are written down here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig
from runs import compose_with_hydra, hydra_conf_single_thread, job_config

import sst.models
import sst.sparsity
from sst.engine.settings import step_plan
from sst.launch.build import trainer_settings

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = CONF / "experiment"
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
METHOD = "experiment/rigl_method@_global_"
DISTRIBUTION = "experiment/rigl_distribution@_global_"

# The table each preset launches with `sst-train -m experiment=NAME`.
SWEEPS: dict[str, dict[str, list]] = {
    "srigl_resnet18_cifar10": {
        "sparsity.density": [0.2, 0.1, 0.05, 0.01],
        "seed": [0, 1, 2, 3, 4],
    },
    "srigl_wrn22_2_cifar10": {
        "sparsity.density": [0.2, 0.1, 0.05, 0.01],
        "seed": [0, 1, 2, 3, 4],
    },
    "srigl_resnet50_imagenet": {"sparsity.density": [0.2, 0.1, 0.05, 0.01]},
    "srigl_vit_b16_imagenet": {"sparsity.density": [0.2, 0.1]},
    "srigl_gamma_sal_study": {
        "sparsity.gamma_sal": [0, 0.05, 0.1, 0.2, 0.3, 0.5],
        "sparsity.density": [0.1, 0.05, 0.01],
    },
    "rigl_resnet50_imagenet": {
        METHOD: ["static", "set", "rigl"],
        DISTRIBUTION: ["uniform", "erk"],
        "sparsity.density": [0.2, 0.1],
    },
    "rigl_wrn22_2_cifar10": {
        METHOD: ["static", "rigl"],
        "sparsity.density": [0.5, 0.2, 0.1, 0.05],
    },
    "lr_rewinding_resnet56_cifar10": {
        "sparsity.density": [0.8, 0.512, 0.21, 0.107, 0.055, 0.0225],
        "seed": [0, 1, 2],
    },
    # CPU-scale studies (scripts/run_cpu_study.sh), not paper presets
    "cpu_study_digits": {
        "sparsity": ["static", "set", "rigl", "srigl"],
        "sparsity.density": [0.1, 0.05, 0.01],
        "seed": [0, 1, 2],
    },
    "cpu_study_cifar10": {
        "sparsity": ["static", "set", "rigl", "srigl"],
        "sparsity.density": [0.1, 0.05, 0.01],
        "seed": [0, 1, 2],
    },
    # issue 22: GMP on MobileNetV1's 1x1 convs, with and without KD from the dense model
    "mobilenet_study_cifar10": {"sparsity.density": [0.25, 0.2, 0.1], "distill": ["none", "kd"]},
}
CPU_STUDIES = [p for p in SWEEPS if p.startswith("cpu_study")]
CIFAR_PRESETS = [
    p
    for p in SWEEPS
    if (p.endswith("cifar10") and p not in CPU_STUDIES) or p == "srigl_gamma_sal_study"
]
IMAGENET_PRESETS = [p for p in SWEEPS if p.endswith("imagenet")]
CIFAR_STEPS_PER_EPOCH = 50_000 // 128  # sst drops the last partial batch: 390
IMAGENET_TRAIN = 1_281_167


@pytest.fixture(scope="module", autouse=True)
def hydra_conf() -> Iterator[None]:
    with hydra_conf_single_thread():
        yield


compose_cfg = compose_with_hydra


def preset(name: str, *overrides: str) -> DictConfig:
    return compose_cfg([f"experiment={name}", *overrides])


def sweep_params(cfg: DictConfig) -> dict[str, list]:
    """hydra.sweeper.params parsed as the basic sweeper parses them."""
    params = cfg.hydra.sweeper.get("params") or {}
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {o.get_key_element(): list(o.sweep_iterator()) for o in overrides}


def sweep_cells(name: str) -> list[list[str]]:
    """The override lists of the jobs `sst-train -m experiment=NAME` launches."""
    cfg = preset(name)
    params = cfg.hydra.sweeper.params
    arguments = [f"{k}={v}" for k, v in params.items()] + [f"experiment={name}"]
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def plan(cfg: DictConfig, dataset_size: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps), computed as sst.launch.build does: micro-batches
    with drop_last, grouped by grad_accumulation."""
    micro = cfg.trainer.batch_size // cfg.trainer.grad_accumulation
    return step_plan(dataset_size // micro, trainer_settings(cfg.trainer))


def total_steps(cfg: DictConfig, dataset_size: int) -> int:
    return plan(cfg, dataset_size)[1]


def lr_factors(cfg: DictConfig, dataset_size: int) -> tuple:
    per_epoch, total = plan(cfg, dataset_size)
    schedule = instantiate(cfg.lr_schedule, steps_per_epoch=per_epoch, total_steps=total)
    return schedule, per_epoch


# ----------------------------------------------------------------------------- every preset
def test_presets_are_known() -> None:
    assert sorted(SWEEPS) == PRESETS, "add the new preset's table to SWEEPS"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_resolves(name: str) -> None:
    cfg = preset(name)
    assert cfg.hydra.runtime.choices.experiment == name
    config = job_config(cfg)
    assert config["output_dir"] == "outputs", "presets leave output_dir alone"
    assert str(cfg.hydra.run.dir).startswith("outputs/runs/")


@pytest.mark.parametrize("name", PRESETS)
def test_sweep_is_the_paper_table(name: str) -> None:
    cfg = preset(name)
    assert sweep_params(cfg) == SWEEPS[name]
    # A single run is one cell of the table.
    assert cfg.sparsity.density in SWEEPS[name]["sparsity.density"]
    assert cfg.seed in SWEEPS[name].get("seed", [cfg.seed])


@pytest.mark.parametrize("name", PRESETS)
def test_every_sweep_cell_composes_into_its_own_run_dir(name: str) -> None:
    cells = sweep_cells(name)
    expected = 1
    for values in SWEEPS[name].values():
        expected *= len(values)
    assert len(cells) == expected
    run_dirs = set()
    for cell in cells:
        cfg = compose_cfg(cell)
        job_config(cfg)
        chosen = dict(item.split("=", 1) for item in cell)
        assert float(chosen["sparsity.density"]) == cfg.sparsity.density
        if "seed" in chosen:
            assert int(chosen["seed"]) == cfg.seed
        if "sparsity.gamma_sal" in chosen:
            assert float(chosen["sparsity.gamma_sal"]) == cfg.sparsity.gamma_sal
        if METHOD in chosen:
            assert cfg.hydra.runtime.choices.sparsity == chosen[METHOD]
        if DISTRIBUTION in chosen:
            uniform = chosen[DISTRIBUTION] == "uniform"
            assert cfg.sparsity.distribution == ("uniform_uncompensated" if uniform else "erk")
            assert cfg.sparsity.dense_first is uniform
        run_dirs.add(str(cfg.hydra.sweep.subdir))
    assert len(run_dirs) == len(cells), "two cells of the table would share a run folder"


PRESET_FILES = sorted(EXPERIMENTS.rglob("*.yaml"))
VALUE_LINE = re.compile(r"^\s*(- )?[\w./@ -]+?\s*:\s*\S")  # key: value, - override /g: o


@pytest.mark.parametrize("path", PRESET_FILES, ids=[str(p.relative_to(CONF)) for p in PRESET_FILES])
def test_every_value_cites_its_source(path: Path) -> None:
    """Each line that sets a value carries a comment saying where the value comes from."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("#") or not VALUE_LINE.match(line):
            continue
        assert " # " in line, f"{path.name}:{number} sets a value without a citation: {line}"


def test_preset_can_set_the_run_name() -> None:
    cfg = preset("srigl_gamma_sal_study", "sparsity.gamma_sal=0.05")
    assert "gsal0.05" in cfg.name
    assert "gsal0.05" in cfg.group


# ----------------------------------------------------------------------------- recipes
# What a run of each preset does, measured on the objects it builds rather than read back
# from its YAML: the optimizer's first step, the LR at given steps, the run's length and
# the topology-update schedule. The expected values are the papers' (see the presets'
# citations), so a preset that stops reproducing its paper fails here.
def first_sgd_step(cfg: DictConfig) -> float:
    """A weight of 1 with gradient 1 after one step of the preset's optimizer."""
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = instantiate(cfg.optimizer, params=[weight])
    weight.grad = torch.ones(1)
    optimizer.step()
    return float(weight.item())


def sgd_expected(lr: float, momentum: float, weight_decay: float, nesterov: bool) -> float:
    """torch.optim.SGD's first step from w = 1, g = 1: g' = g + wd * w, buffer = g',
    update = g' + momentum * buffer with Nesterov, buffer without."""
    grad = 1.0 + weight_decay
    return 1.0 - lr * (grad * (1 + momentum) if nesterov else grad)


def stand_in_method(cfg: DictConfig, steps: int):
    model = sst.models.mlp(10, (1, 4, 4))
    method, _ = build_method(cfg, model, steps)
    return method


def update_steps(method, total: int) -> list[int]:
    return [s for s in range(1, total + 1) if method.is_update_step(s)]


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("srigl_resnet18_cifar10", "resnet18_cifar"),
        ("srigl_wrn22_2_cifar10", "wrn22_2"),
        ("srigl_gamma_sal_study", "resnet18_cifar"),
    ],
)
def test_srigl_cifar10_recipe(name: str, model: str) -> None:
    cfg = preset(name)
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.dataset, choices.sparsity) == (model, "cifar10", "srigl")
    per_epoch, total = plan(cfg, 50_000)
    assert (per_epoch, total) == (CIFAR_STEPS_PER_EPOCH, 250 * CIFAR_STEPS_PER_EPOCH)
    assert first_sgd_step(cfg) == pytest.approx(sgd_expected(0.1, 0.9, 5e-4, nesterov=True))
    schedule, _ = lr_factors(cfg, 50_000)
    assert schedule(77 * per_epoch - 1) == 1.0
    assert schedule(77 * per_epoch) == pytest.approx(0.2)
    assert schedule(154 * per_epoch) == pytest.approx(0.04)
    method = stand_in_method(cfg, total)
    assert isinstance(method, sst.sparsity.SRigL) and method.structure.kind == "constant_fanin"
    updates = update_steps(method, total)
    assert updates[0] == 100 and updates[-1] < 0.75 * total <= updates[-1] + 100
    assert method.drop_fraction(0) == pytest.approx(0.3)
    assert method.gamma_sal == 0.3  # the paper's CNN setting; swept by the study


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("srigl_resnet18_cifar10", ()),
        ("srigl_wrn22_2_cifar10", ()),
        ("srigl_resnet50_imagenet", ()),
        ("srigl_vit_b16_imagenet", ()),
        ("srigl_resnet18_cifar10", ("sparsity=rigl", "~sparsity.gamma_sal")),  # the RigL row
    ],
)
def test_srigl_table_presets_redraw_with_the_authors_grad_flow_rule(name, overrides) -> None:
    # calgaryml/condensed-sparsity@3052bb8 configs/config.yaml use_sparse_initialization:
    # True, init_method_str: grad_flow_init (src/rigl_torch/utils/sparse_init.py:
    # normal_(0, 2 / fan_in), a std of 2/k), applied to RigL runs too (rigl_scheduler.py)
    cfg = preset(name, *overrides)
    assert cfg.sparsity.sparse_init is True and cfg.sparsity.sparse_init_rule == "grad_flow"
    method = stand_in_method(cfg, 1000)
    he = stand_in_method(preset(name, *overrides, "sparsity.sparse_init_rule=he"), 1000)
    assert method.weights
    for layer, weight in method.weights.items():
        mask = method.masks[layer].bool()
        k = mask.reshape(mask.shape[0], -1).sum(dim=1).float().unsqueeze(1)
        # the same draws, scaled by 2/k instead of sqrt(2/k)
        expected = he.weights[layer].detach() * torch.sqrt(2 / k.clamp(min=1))
        assert torch.allclose(weight.detach(), expected, atol=1e-7), layer


def test_srigl_resnet50_imagenet_recipe() -> None:
    cfg = preset("srigl_resnet50_imagenet")
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.dataset, choices.sparsity) == ("resnet50", "imagenet", "srigl")
    per_epoch, total = plan(cfg, IMAGENET_TRAIN)
    assert total == 256_000 and per_epoch == IMAGENET_TRAIN // 512
    assert first_sgd_step(cfg) == pytest.approx(sgd_expected(0.2, 0.9, 1e-4, nesterov=True))
    schedule, _ = lr_factors(cfg, IMAGENET_TRAIN)
    assert schedule(0) < 0.01 and schedule(5 * per_epoch) == 1.0
    assert schedule(30 * per_epoch) == pytest.approx(0.1)
    assert schedule(90 * per_epoch) == pytest.approx(1e-3)
    method = stand_in_method(cfg, total)
    assert update_steps(method, 2000) == [800, 1600]
    assert method.grad_accumulation == 8 and method._needs_dense_grad(793)
    assert not method._needs_dense_grad(792)
    first = next(iter(method.candidates))
    assert first in method.masks  # the authors' configs leave the first conv sparse
    # the authors' crop: shorter side 256 or 480 at random, random 224 crop, flip
    assert cfg.dataset.train_crop == "resize_256_480"


def test_srigl_vit_b16_imagenet_recipe() -> None:
    cfg = preset("srigl_vit_b16_imagenet")
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.dataset, choices.sparsity) == ("vit_b_16", "imagenet", "srigl")
    per_epoch, total = plan(cfg, IMAGENET_TRAIN)
    assert total == 46_918 and cfg.trainer.batch_size == 4096
    optimizer = instantiate(cfg.optimizer, params=[torch.nn.Parameter(torch.ones(1))])
    assert isinstance(optimizer, torch.optim.AdamW)
    schedule, _ = lr_factors(cfg, IMAGENET_TRAIN)
    assert schedule(16 * per_epoch) == pytest.approx(1.0)
    assert schedule(total - 1) < 1e-3
    method = stand_in_method(cfg, total)
    assert method.gamma_sal == 0.95  # the paper's ViT setting
    # the dense gradient of the 8 optimizer steps (of 4096) before each update, as the
    # authors' rigl/vit.yaml grad_accumulation_n: 8
    assert method.grad_accumulation == 8 and update_steps(method, 300) == [100, 200, 300]
    assert method._needs_dense_grad(93) and not method._needs_dense_grad(92)
    assert "train_crop" not in cfg.dataset  # their ViT loader uses RandomResizedCrop too
    densities = set(method.layer_density.values())
    assert len(densities) == 1, "uniform distribution"


def test_rigl_resnet50_imagenet_recipe() -> None:
    cfg = preset("rigl_resnet50_imagenet")
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.dataset, choices.sparsity) == ("resnet50", "imagenet", "rigl")
    per_epoch, total = plan(cfg, IMAGENET_TRAIN)
    assert total == 32_000 and cfg.trainer.batch_size == 4096, "the paper's optimizer batch"
    assert first_sgd_step(cfg) == pytest.approx(sgd_expected(1.6, 0.9, 1e-4, nesterov=True))
    schedule, _ = lr_factors(cfg, IMAGENET_TRAIN)
    assert schedule(30 * per_epoch) == pytest.approx(0.1)
    method = stand_in_method(cfg, total)
    assert method.skip_optimizer_step and update_steps(method, 300) == [100, 200, 300]
    assert method.drop_fraction(0) == pytest.approx(0.3)
    # the TF reference's maskupdate_end_step: 25000 of 32000 (not 75% = 24000)
    assert method.t_end == 25_000 and update_steps(method, total)[-1] == 24_900

    uniform = stand_in_method(preset("rigl_resnet50_imagenet", f"{DISTRIBUTION}=uniform"), total)
    assert next(iter(uniform.candidates)) not in uniform.masks  # first layer dense, on top
    assert set(uniform.layer_density.values()) == {0.1, 1.0}
    for method_name, skips in (("set", False), ("rigl", True)):
        cell = stand_in_method(preset("rigl_resnet50_imagenet", f"{METHOD}={method_name}"), total)
        # the TF RigL skips the SGD step on update iterations; the TF SET steps, then updates
        assert cell.skip_optimizer_step is skips and update_steps(cell, 300) == [100, 200, 300]
        assert cell.t_end == 25_000
    static = stand_in_method(preset("rigl_resnet50_imagenet", f"{METHOD}=static"), total)
    assert type(static) is sst.sparsity.Static


def test_rigl_wrn22_2_cifar10_recipe() -> None:
    cfg = preset("rigl_wrn22_2_cifar10")
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.dataset, choices.sparsity) == ("wrn22_2", "cifar10", "rigl")
    per_epoch, total = plan(cfg, 50_000)
    assert total == 250 * CIFAR_STEPS_PER_EPOCH
    # the TF reference: MomentumOptimizer(use_nesterov=True)
    assert first_sgd_step(cfg) == pytest.approx(sgd_expected(0.1, 0.9, 5e-4, nesterov=True))
    schedule, _ = lr_factors(cfg, 50_000)
    # "divided by 5 every 30k steps": the first drop lands within one epoch of step 30000.
    assert schedule(30_000 - per_epoch) == 1.0
    assert schedule(30_000 + per_epoch) == pytest.approx(0.2)
    method = stand_in_method(preset("rigl_wrn22_2_cifar10", "sparsity.exclude=[]"), total)
    # the TF reference's maskupdate_end_step 75000 (75% of sst's 97,500 steps would be 73,125)
    assert method.t_end == 75_000 and update_steps(method, total)[-1] == 74_900
    assert method.skip_optimizer_step


# ----------------------------------------------------------------------------- LR rewinding
def test_lr_rewinding_resnet56_cifar10_recipe() -> None:
    cfg = preset("lr_rewinding_resnet56_cifar10")
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.dataset, choices.sparsity) == (
        "resnet56",
        "cifar10",
        "lr_rewinding",
    )
    assert cfg.sparsity._target_ == "sst.sparsity.LRRewinding"
    assert cfg.sparsity.distribution == "global_magnitude"
    assert (cfg.sparsity.prune_fraction, cfg.sparsity.retrain) == (0.2, "lr_rewinding")
    baseline = preset("lr_rewinding_resnet56_cifar10", "sparsity=fine_tuning")
    assert baseline.hydra.runtime.choices.sparsity == "fine_tuning"
    assert (baseline.sparsity.retrain, baseline.trainer.epochs) == ("fine_tuning", 182)
    assert cfg.trainer.epochs == 182
    assert cfg.trainer.batch_size == 128
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        0.1,
        0.9,
        2e-4,
    )
    schedule, per_epoch = lr_factors(cfg, 50_000)
    assert schedule(0) == 1.0
    assert schedule(91 * per_epoch - 1) == 1.0
    assert schedule(91 * per_epoch) == pytest.approx(0.1)
    assert schedule(136 * per_epoch) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("density", "rounds"), [(0.8, 1), (0.512, 3), (0.21, 7), (0.107, 10), (0.055, 13), (0.0225, 17)]
)
def test_lr_rewinding_preset_runs_the_papers_rounds(density: float, rounds: int) -> None:
    """Each density of the table is 0.8^r: r rounds after the dense training, each a
    stage of 182 epochs that replays the LR schedule."""
    cfg = preset("lr_rewinding_resnet56_cifar10", f"sparsity.density={density}")
    model = sst.models.mlp(10, (1, 4, 4))
    steps = total_steps(cfg, 50_000)
    method, _ = build_method(cfg, model, steps)
    stages = method.stages(steps)
    assert len(stages) == rounds + 1
    assert all(s.steps == 182 * CIFAR_STEPS_PER_EPOCH for s in stages)
    assert all(s.schedule_step(s.start) == 0 for s in stages)


def test_lr_rewinding_preset_prunes_resnet56_globally() -> None:
    cfg = preset("lr_rewinding_resnet56_cifar10")
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=10, input_shape=(3, 32, 32))
    method, optimizer = build_method(cfg, model, total_steps(cfg, 50_000))
    assert "conv1" in method.masks and "fc" in method.masks  # first conv, final linear
    assert any("shortcut" in name for name in method.masks)
    one_step(model, method, optimizer, (3, 32, 32))
    assert method.metrics()["sparsity/masked_layers"] == 0.0  # dense training first
    method.on_stage_start(method.stages(100)[-1])  # the last round's density at once
    assert method.metrics()["sparsity/masked_layers"] == pytest.approx(0.893, abs=1e-3)
    one_step(model, method, optimizer, (3, 32, 32))


# ----------------------------------------------------------------------------- build
def build_method(cfg: DictConfig, model: torch.nn.Module, steps: int):
    optimizer = instantiate(cfg.optimizer, params=model.parameters())
    method = instantiate(
        cfg.sparsity, model=model, optimizer=optimizer, total_steps=steps, seed=cfg.seed
    )
    return method, optimizer


def one_step(model, method, optimizer, shape) -> None:
    model.train()
    loss = model(torch.randn(2, *shape)).logsumexp(dim=1).mean()
    loss.backward()
    method.before_step()
    optimizer.step()
    method.after_step()
    optimizer.zero_grad()


CIFAR_CELLS = [
    ("srigl_resnet18_cifar10", ()),
    ("srigl_wrn22_2_cifar10", ()),
    ("srigl_gamma_sal_study", ("sparsity.gamma_sal=0",)),
    ("rigl_wrn22_2_cifar10", (f"{METHOD}=static",)),
    ("rigl_wrn22_2_cifar10", (f"{METHOD}=rigl",)),
]


@pytest.mark.parametrize(("name", "overrides"), CIFAR_CELLS)
def test_cifar_preset_builds_its_method_on_its_model(name: str, overrides: tuple) -> None:
    cfg = preset(name, *overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=10, input_shape=(3, 32, 32))
    method, optimizer = build_method(cfg, model, total_steps(cfg, 50_000))
    assert type(method).__name__ == cfg.sparsity._target_.rsplit(".", 1)[1]
    if "exclude" in cfg.sparsity and cfg.sparsity.exclude:
        assert not set(cfg.sparsity.exclude) & set(method.candidates)
    sparsity = method.metrics()["sparsity/masked_layers"]
    assert sparsity == pytest.approx(1 - cfg.sparsity.density, abs=0.01)
    one_step(model, method, optimizer, (3, 32, 32))


@pytest.mark.parametrize("name", IMAGENET_PRESETS)
def test_imagenet_preset_keys_are_constructor_arguments(name: str) -> None:
    """ResNet-50 / ViT-B are too slow to sparsify here: the preset's sparsity and optimizer
    nodes are instantiated on a small stand-in model instead (test_*_slow does the real one)."""
    cfg = preset(name)
    model = sst.models.mlp(10, (1, 4, 4))  # a small first layer leaves dense_first a budget
    method, optimizer = build_method(cfg, model, total_steps(cfg, IMAGENET_TRAIN))
    assert isinstance(method, sst.sparsity.SparsityMethod)
    one_step(model, method, optimizer, (1, 4, 4))


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET_PRESETS)
def test_imagenet_preset_builds_its_method_on_its_model_slow(name: str) -> None:
    cfg = preset(name)
    model = instantiate(cfg.model, num_classes=1000, input_shape=(3, 32, 32))
    method, optimizer = build_method(cfg, model, total_steps(cfg, IMAGENET_TRAIN))
    if "MultiheadAttention" in cfg.sparsity.layer_types:
        assert any(n.endswith("in_proj_weight") for n in method.masks)
    one_step(model, method, optimizer, (3, 32, 32))
