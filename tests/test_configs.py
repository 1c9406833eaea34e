"""Every option of every config group in ``conf/`` composes, resolves and builds.

The options are discovered by listing ``conf/<group>/*.yaml``, so a new option is tested the
moment it is added. Experiment presets have their own file (``test_experiments.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from runs import compose_with_hydra, hydra_conf_single_thread, job_config

import sst.models
import sst.sparsity
from sst.launch.build import check_settings

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = sorted(d.name for d in CONF.iterdir() if d.is_dir() and d.name != "experiment")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]

# Mandatory (???) values an option leaves to the user, set here so it resolves fully.
MANDATORY = {
    ("dataset", "imagefolder"): ["dataset.root=/tmp/sst-images"],
}
# Small inputs that every builder accepts (ViT-B/16 and ResNet-50 at 32x32, not 224x224).
INPUT_SHAPES = {"mlp": (1, 8, 8)}
CIFAR_SHAPE = (3, 32, 32)


def has_submitit() -> bool:
    return has_plugin("hydra_submitit_launcher")


def has_plugin(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"hydra_plugins.{name}") is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="module", autouse=True)
def hydra_conf() -> Iterator[None]:
    with hydra_conf_single_thread():
        yield


compose_cfg = compose_with_hydra


def run_dir(overrides: Sequence[str] = ()) -> str:
    return str(compose_cfg(overrides).hydra.run.dir)


def option_overrides(group: str, option: str) -> list[str]:
    return [f"{group}={option}", *MANDATORY.get((group, option), [])]


# ----------------------------------------------------------------------------- discovery
def test_groups_are_discovered() -> None:
    assert {"model", "dataset", "sparsity", "optimizer", "lr_schedule", "trainer"} <= set(GROUPS)
    defaults = OmegaConf.load(CONF / "config.yaml").defaults
    listed = {next(iter(d)).removeprefix("optional ") for d in defaults if d != "_self_"}
    assert set(GROUPS) <= listed, "a folder under conf/ that config.yaml's defaults omit"


# ----------------------------------------------------------------------------- composition
def test_default_composes_and_resolves() -> None:
    cfg = compose_cfg()
    config = job_config(cfg)
    assert config["sparsity"]["_target_"] == "sst.sparsity.SRigL"
    assert cfg.name == "digits-mlp-srigl-d0.1-s0"
    assert str(cfg.hydra.run.dir).startswith("outputs/runs/digits-mlp-srigl-d0.1-s0-")


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(group: str, option: str) -> None:
    if group == "launcher" and option.startswith("submitit") and not has_submitit():
        pytest.skip("hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")
    if group == "hparams_search" and not has_plugin("hydra_optuna_sweeper"):
        pytest.skip("hydra-optuna-sweeper is not installed (pip install -e '.[optuna]')")
    cfg = compose_cfg(option_overrides(group, option))
    assert cfg.hydra.runtime.choices[group] == option
    config = job_config(cfg)
    assert option in config["name"] or group not in ("model", "dataset", "sparsity")
    for key in ("run.dir", "sweep.dir", "sweep.subdir"):
        assert OmegaConf.select(cfg.hydra, key, throw_on_missing=True)
    # the check every run makes before it builds anything: a key the option adds that the
    # schemas lack (slurm.nodes once) stops every job of that option with exit code 2
    check_settings(OmegaConf.create(config))


def test_mandatory_value_is_reported_when_unset() -> None:
    cfg = compose_cfg(["dataset=imagefolder"])
    with pytest.raises(Exception, match="root"):
        job_config(cfg)


@pytest.mark.parametrize(
    "override", ["sparsity=nope", "model=nope", "dataset=nope", "lr_schedule=nope"]
)
def test_unknown_option_lists_the_available_ones(override: str) -> None:
    group = override.split("=")[0]
    with pytest.raises(MissingConfigException) as error:
        compose_cfg([override])
    message = str(error.value)
    assert f"Available options in '{group}'" in message
    for path in (CONF / group).glob("*.yaml"):
        assert path.stem in message


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_cfg(["sparsity.no_such_key=1"])


def test_every_target_is_importable() -> None:
    for group, option in OPTIONS:
        target = OmegaConf.load(CONF / group / f"{option}.yaml").get("_target_")
        if target is not None:
            assert callable(get_object(target)), f"{group}/{option}: {target}"


# ----------------------------------------------------------------------------- run folder
def hash_of(path: str) -> str:
    return path.rsplit("-", 1)[1]


@pytest.mark.parametrize(
    "override",
    [
        "sparsity.density=0.05",
        "seed=1",
        "sparsity.alpha=0.4",
        "sparsity.gamma_sal=0.5",
        "optimizer.lr=0.05",
        "lr_schedule.gamma=0.1",
        "trainer.epochs=3",
        "trainer.batch_size=64",
        "model.hidden=[64]",
        "dataset.test_fraction=0.3",
    ],
)
def test_run_dir_changes_with_a_result_setting(override: str) -> None:
    base = run_dir()
    changed = run_dir([override])
    assert changed != base
    assert hash_of(changed) != hash_of(base), "the hash must cover the setting"


@pytest.mark.parametrize(
    "override",
    [
        "trainer.progress_bar=false",
        "trainer.log_every=7",
        "trainer.checkpoint_every_epochs=5",
        "trainer.num_workers=4",
        "trainer.device=cpu",
        "trainer.eval_batch_size=64",
        "logger=none",
    ],
)
def test_run_dir_ignores_an_observation_setting(override: str) -> None:
    assert run_dir([override]) == run_dir()


def test_run_dir_is_stable() -> None:
    assert run_dir(["sparsity=rigl", "seed=2"]) == run_dir(["seed=2", "sparsity=rigl"])


def test_sweep_subdir_matches_run_dir() -> None:
    cfg = compose_cfg(["sparsity.density=0.2"])
    assert str(cfg.hydra.run.dir) == f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"


# ----------------------------------------------------------------------------- instantiation
SPARSITY = [o for g, o in OPTIONS if g == "sparsity"]
MODELS = [o for g, o in OPTIONS if g == "model"]
OPTIMIZERS = [o for g, o in OPTIONS if g == "optimizer"]
LR_SCHEDULES = [o for g, o in OPTIONS if g == "lr_schedule"]


@pytest.mark.parametrize("option", SPARSITY)
def test_sparsity_option_instantiates_and_reaches_its_density(option: str) -> None:
    """Every stage the method asks for, a few steps each: pruning methods start dense and
    reach the density by the end, the others hold it from the start."""
    cfg = compose_cfg([f"sparsity={option}"])
    torch.manual_seed(0)
    model = sst.models.mlp(10, (1, 8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = 4
    method = instantiate(cfg.sparsity, model=model, optimizer=optimizer, total_steps=steps, seed=0)
    assert isinstance(method, sst.sparsity.SparsityMethod)
    assert type(method).__name__ == cfg.sparsity._target_.rsplit(".", 1)[1]
    assert method.density == pytest.approx(cfg.sparsity.density)
    for stage in method.stages(steps):
        method.on_stage_start(stage)
        for _ in range(stage.steps):
            loss = model(torch.randn(4, 1, 8, 8)).logsumexp(dim=1).mean()
            loss.backward()
            method.before_step()
            optimizer.step()
            method.after_step()
            optimizer.zero_grad()
            for name, mask in method.masks.items():
                weight = method.weights[name]
                assert torch.all(weight[mask == 0] == 0), f"{option}: {name} is off its mask"
    sparsity = method.metrics()["sparsity/masked_layers"]
    assert sparsity == pytest.approx(1 - cfg.sparsity.density, abs=0.02)


@pytest.mark.parametrize("option", MODELS)
def test_model_option_builds_and_runs(option: str) -> None:
    cfg = compose_cfg([f"model={option}"])
    shape = INPUT_SHAPES.get(option, CIFAR_SHAPE)
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=10, input_shape=shape)
    assert isinstance(model, torch.nn.Module)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("option", OPTIMIZERS)
def test_optimizer_option_instantiates(option: str) -> None:
    cfg = compose_cfg([f"optimizer={option}"])
    params = [torch.nn.Parameter(torch.randn(3, 3))]
    optimizer = instantiate(cfg.optimizer, params=params)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)


@pytest.mark.parametrize("option", LR_SCHEDULES)
def test_lr_schedule_option_instantiates(option: str) -> None:
    cfg = compose_cfg([f"lr_schedule={option}"])
    schedule = instantiate(cfg.lr_schedule, steps_per_epoch=10, total_steps=1000)
    factors = [schedule(step) for step in range(1000)]
    assert all(0.0 <= f <= 1.0 for f in factors)
    assert max(factors) == pytest.approx(1.0)


def test_a_written_data_root_is_part_of_the_run_identity():
    flowers = run_dir(["dataset=imagefolder", "dataset.root=/data/flowers"])
    assert flowers != run_dir(["dataset=imagefolder", "dataset.root=/data/birds"])


def test_a_data_root_moved_through_its_environment_variable_keeps_the_run(monkeypatch):
    monkeypatch.setenv("SST_DATA", "/home/me/data")
    home = run_dir(["dataset=cifar10"])
    monkeypatch.setenv("SST_DATA", "/scratch/job-17")
    assert run_dir(["dataset=cifar10", "trainer.num_workers=8"]) == home
