"""Run identity: pinned folder names, settings that are not identity, neutral values of
later settings, and misspelled keys on the command line and in presets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.utils import get_object
from runs import QUICK, compose_run, compose_with_hydra, hydra_conf_single_thread

import sst.runs.identity as identity
from sst.config.directory import CONFIG_DIR
from sst.config.keys import ConfigError, check_command_line
from sst.launch.build import build

# Folder names of runs made before this test existed: a change to the identity that moves
# them would orphan every finished run (tables, skip-if-finished, distillation teachers).
PINNED = [
    ([], "digits-mlp-srigl-d0.1-s0-928379bc"),
    (["sparsity=rigl", "seed=2"], "digits-mlp-rigl-d0.1-s2-e5cea962"),
    (
        ["model=resnet20", "dataset=cifar10", "sparsity=static"],
        "cifar10-resnet20-static-d0.1-s0-b4672e20",
    ),
    # moved on purpose (was ...-6c7f47ef): the preset now re-draws the sparse weights with
    # the SRigL authors' rule (sparse_init: true, sparse_init_rule: grad_flow; issue 18),
    # so its runs compute something else and must not resume or skip the old ones
    (["experiment=srigl_resnet18_cifar10"], "cifar10-resnet18_cifar-srigl-d0.1-s0-01894d60"),
    (
        ["dataset=imagefolder", "dataset.root=/data/flowers", "sparsity=dense"],
        "imagefolder-mlp-dense-d1.0-s0-4dd30dc7",
    ),
    (
        [
            "distill=kd",
            "distill.teacher_run=/runs/teacher",
            "optimizer=adamw",
            "lr_schedule=cosine",
        ],
        "digits-mlp-srigl-d0.1-s0-f54f288d",
    ),
]


@pytest.fixture
def hydra_conf() -> Iterator[None]:
    with hydra_conf_single_thread():
        yield


def folder(overrides: list[str]) -> str:
    return str(compose_with_hydra(overrides).hydra.run.dir).rsplit("/", 1)[1]


uses_hydra = pytest.mark.usefixtures("hydra_conf")


@uses_hydra
@pytest.mark.parametrize(("overrides", "expected"), PINNED, ids=[e for _, e in PINNED])
def test_pinned_run_folders_do_not_move(overrides, expected):
    assert folder(overrides) == expected


@uses_hydra
def test_a_setting_added_at_its_neutral_value_keeps_every_identity(monkeypatch):
    monkeypatch.setitem(identity.NEUTRAL, "trainer.new_knob", 0.0)
    cfg = compose_with_hydra(["+trainer.new_knob=0.0"])
    assert identity.run_folder_name(cfg) == PINNED[0][1]
    changed = compose_with_hydra(["+trainer.new_knob=0.5"])
    assert identity.run_folder_name(changed) != PINNED[0][1]


@uses_hydra
def test_an_unregistered_new_setting_changes_the_identity():
    assert folder(["+trainer.new_knob=0.0"]) != PINNED[0][1]


@uses_hydra
def test_not_identity_settings_are_named_by_path_only():
    # `device` and `download` are ignored where NOT_IDENTITY names them, nowhere else
    assert folder(["trainer.device=cpu", "trainer.progress_bar=false"]) == PINNED[0][1]
    assert folder(["+model.device=cpu"]) != PINNED[0][1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["trainer.epochz=3"],
            r"trainer\.epochz is not a setting\. Did you mean trainer\.epochs\?",
        ),
        (["trainr.epochs=3"], r"trainr is not a setting\. Did you mean trainer\?"),
        (["sparsity=rigl", "sparsity.delta=5"], r"Did you mean sparsity\.delta_t\?"),
        (["experiment=srigl_resnet18_cifar10", "sparsity.gama_sal=0"], r"sparsity\.gamma_sal"),
    ],
)
def test_a_misspelled_key_on_the_command_line_names_the_close_matches(args, message):
    with pytest.raises(ConfigError, match=message):
        check_command_line(args, CONFIG_DIR)


def test_valid_command_lines_pass_the_key_check():
    for args in (
        ["sparsity=rigl", "sparsity.delta_t=5", "seed=1"],
        ["-m", "sparsity=rigl,set", "sparsity.delta_t=5"],  # a group sweep is left to Hydra
        ["+trainer.extra=1"],  # an explicit addition is Hydra's and the build check's
    ):
        check_command_line(args, CONFIG_DIR)


def test_a_misspelled_key_in_a_preset_fails_before_the_first_step(tmp_path):
    # a preset merges keys that the command line could not add; `+` stands in for one
    cfg, run_dir, choices = compose_run([*QUICK, "logger=none", "+trainer.epochz=3"], tmp_path)
    with pytest.raises(ConfigError, match=r"trainer\.epochz is not a setting\. Did you mean"):
        build(cfg, run_dir, choices)
    cfg, run_dir, choices = compose_run([*QUICK, "logger=none", "+sparsity.alhpa=0.2"], tmp_path)
    with pytest.raises(
        ConfigError, match=r"sparsity\.alhpa is not a setting\. Did you mean sparsity\.alpha"
    ):
        build(cfg, run_dir, choices)
    assert not run_dir.exists()


@uses_hydra
def test_moving_a_target_keeps_the_identity(monkeypatch):
    """A module move changes ``_target_`` in conf/ and the entry in ``identity.TARGETS``;
    the run keeps its folder."""
    stable = str(compose_with_hydra([]).lr_schedule._target_)
    moved = "sst.schedules.learning_rate." + stable.rsplit(".", 1)[1]
    monkeypatch.setitem(identity.TARGETS, stable, moved)
    assert folder([f"lr_schedule._target_={moved}"]) == PINNED[0][1]
    # without the entry, the moved path is a different run (and the old path still counts)
    monkeypatch.setitem(identity.TARGETS, stable, stable)
    assert folder([f"lr_schedule._target_={moved}"]) != PINNED[0][1]
    assert folder([]) == PINNED[0][1]


def test_every_target_imports_and_every_entry_points_at_the_code():
    """Each sst ``_target_`` in conf/ imports, and so does each ``identity.TARGETS`` entry's
    current path: code moved without its entry updated fails here, before it moves every
    finished run that used it. A new target needs no entry (adding a method is one Python
    file and one YAML file): it counts by its path as written until its code moves."""
    found = set()
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        found |= set(re.findall(r"_target_:\s*(sst\.[\w.]+)", path.read_text()))
    for target in found | set(identity.TARGETS.values()):
        get_object(target)
    assert identity.stable_target("sst.sparsity.new_rule.NewRule") == (
        "sst.sparsity.new_rule.NewRule"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["experiment=srigl_resnet18_cifar"], r"Did you mean experiment=srigl_resnet18_cifar10"),
        (["-m", "experiment=srigl_resnet18_cifar10,nope"], r"experiment=nope is not an option"),
        (["sparsity=rigll"], r"Did you mean sparsity=rigl"),
    ],
)
def test_an_option_that_does_not_exist_fails_with_close_matches(args, message):
    with pytest.raises(ConfigError, match=message):
        check_command_line(args, CONFIG_DIR)


@pytest.mark.parametrize(
    "args",
    [
        ["dataset=imagefolder", "dataset.root=/data/flowers"],  # a mandatory ??? setting
        ["-sc", "install=bash"],  # Hydra's flag and its value, not an override
        ["--shell-completion", "install=bash"],
        ["--cfg", "job", "sparsity=rigl"],
        ["-m", "sparsity=rigl,srigl", "seed=0,1"],
    ],
)
def test_valid_command_lines_pass_the_check(args):
    check_command_line(args, CONFIG_DIR)


def test_sst_train_version_is_sst_version(capsys, monkeypatch):
    import sst
    import sst.train

    monkeypatch.setattr("sys.argv", ["sst-train", "--version"])
    sst.train.main()
    assert capsys.readouterr().out.strip() == f"sst {sst.__version__}"
