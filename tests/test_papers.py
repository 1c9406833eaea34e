"""The published tables (sst/paper_tables) as their authors made them: the metric of each side
(SRigL's tables are best test accuracies), one selection rule for Renda et al.'s rows, and
which runs a row accepts, checked on run configs composed from sst's own presets."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabricated import make_run
from omegaconf import OmegaConf
from runs import compose_with_hydra, hydra_conf_single_thread
from tabletext import unpadded

from sst.config.schema import check_config
from sst.launch.build import run_info
from sst.study.papers import (
    METRIC_TEXT,
    fill,
    load_paper_table,
    paper_table_names,
    parse_paper_table,
    run_matches,
)
from sst.study.results import Run, collect
from sst.study.table_cli import main as sst_table

SRIGL_TABLES = [
    "srigl-resnet18-cifar10",
    "srigl-wrn22-2-cifar10",
    "srigl-resnet50-imagenet",
    "srigl-vit-b16-imagenet",
]
METHOD = "experiment/rigl_method@_global_"


# ----------------------------------------------------------------------------- metric
def test_srigl_tables_are_best_accuracies_the_others_final() -> None:
    """The SRigL authors' results notebook builds its tables from best_accuracy."""
    for name in paper_table_names():
        expected = "best" if name in SRIGL_TABLES else "final"
        assert load_paper_table(name).metric == expected, name


def test_a_table_metric_is_final_or_best() -> None:
    data = {"title": "t", "source": {}, "metric": "final top-1 test accuracy (%)", "rows": []}
    with pytest.raises(ValueError, match="metric='final top-1 test accuracy"):
        parse_paper_table("made-up", data)


def srigl_cifar_run(root: Path, **kwargs) -> Path:
    """A finished SRigL-recipe run on ResNet-18 / CIFAR-10 (final 90, best 93 unless given)."""
    settings = {"dataset.normalize": False, **kwargs.pop("settings", {})}
    options = {"acc": 90.0, "best": 93.0, "density": 0.1, "epochs": 250, **kwargs}
    return make_run(root, dataset="cifar10", model="resnet18_cifar", settings=settings, **options)


def test_fill_compares_the_tables_own_metric(tmp_path: Path) -> None:
    srigl_cifar_run(tmp_path, seed=0)
    srigl_cifar_run(tmp_path, seed=1, acc=92.0, best=95.0)
    found = collect([tmp_path])
    table = load_paper_table("srigl-resnet18-cifar10")
    cell = next(c for c in fill(table, found.runs) if (c.row, c.sparsity) == ("SRigL", 0.9))
    assert cell.metric == "best" and cell.accuracy.mean == 94.0  # best, not final (91)
    assert cell.difference == pytest.approx(94.0 - 95.11)
    assert cell.also == {}
    asked = fill(table, found.runs, metric="final")
    cell = next(c for c in asked if (c.row, c.sparsity) == ("SRigL", 0.9))
    assert cell.accuracy.mean == 94.0 and cell.also["final"].mean == 91.0  # beside, not compared
    assert cell.difference == pytest.approx(94.0 - 95.11)


def test_cli_labels_the_metric_of_each_side(tmp_path: Path, capsys) -> None:
    """sst-table --paper on a fabricated set of runs: both metrics, each labelled."""
    srigl_cifar_run(tmp_path, seed=0)
    srigl_cifar_run(tmp_path, seed=1, acc=92.0, best=95.0)
    assert sst_table([str(tmp_path), "--paper", "srigl-resnet18-cifar10"]) == 0
    out = unpadded(capsys.readouterr().out)
    assert (
        "| method | sparsity | published best test acc (%) | sst best test acc (%) | n | Δ "
        "| sst final test acc (%), not compared | epochs |" in out
    )
    assert "| SRigL | 90% | 95.11 | 94.00 ± 1.41 | 2 | -1.11 | 91.00 ± 1.41 | 250 |" in out
    assert (
        f"Metric: published = {METRIC_TEXT['best']}; sst = the same metric of its runs "
        "(summary.json best_test_acc)" in out
    )
    assert "(summary.json final_test_acc), shown beside, not compared." in out
    assert "Δ = sst mean - published, both best accuracy." in out

    assert sst_table([str(tmp_path), "--paper", "srigl-resnet18-cifar10", "--metric", "best"]) == 0
    out = unpadded(capsys.readouterr().out)
    assert "| SRigL | 90% | 95.11 | 94.00 ± 1.41 | 2 | -1.11 | 250 |" in out
    assert "not compared" not in out

    argv = [str(tmp_path), "--paper", "srigl-resnet18-cifar10", "--format", "json"]
    assert sst_table(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["metric"], data["also"]) == ("best", ["final"])
    assert data["published_metric"] == data["sst_metric"] == METRIC_TEXT["best"]
    cell = next(c for c in data["cells"] if (c["row"], c["sparsity"]) == ("SRigL", 0.9))
    assert (cell["sst_mean"], cell["sst_final_mean"]) == (94.0, 91.0)


def test_a_final_table_compares_final_and_shows_best_beside(tmp_path: Path, capsys) -> None:
    settings = {"dataset.normalize": True}
    make_run(
        tmp_path,
        method="static",
        dataset="cifar10",
        model="wrn22_2",
        acc=91.0,
        best=92.0,
        settings=settings,
    )
    argv = [str(tmp_path), "--paper", "rigl-wrn22-2-cifar10", "--metric", "best"]
    assert sst_table(argv) == 0
    out = unpadded(capsys.readouterr().out)
    assert "| published final test acc (%) | sst final test acc (%) |" in out
    assert "| sst best test acc (%), not compared |" in out
    assert "| Static | 90% | 91.5 | 91.0 | 1 | -0.5 | 92.0 | 3 |" in out


# ----------------------------------------------------------------------------- Renda et al.
def test_renda_rows_are_both_at_the_full_retraining_length() -> None:
    """lottery-ticket/rewinding-iclr20-public vision/plot/pruned_dataframe.pkl: the median
    of 3 runs at retrain_time 182 (ResNet-56) and 90 (ResNet-50), for both rows."""
    expected = {
        "lr-rewinding-resnet56-cifar10": {
            "LR rewinding": [93.83, 93.79, 93.70, 93.56, 92.88, 91.26],
            "Fine-tuning": [93.53, 93.49, 92.98, 91.24, 90.88, 87.65],
        },
        "lr-rewinding-resnet50-imagenet": {
            "LR rewinding": [76.35, 76.71, 76.21, 75.48],
            "Fine-tuning": [76.25, 76.11, 74.96, 73.84],
        },
    }
    for name, rows in expected.items():
        table = load_paper_table(name)
        for row in table.rows:
            if row.label in rows:
                values = [row.values[d] for d in sorted(row.values, reverse=True)]
                assert values == rows[row.label], (name, row.label)
        assert "One rule for both rows: the full retraining length" in table.source["table"]


# ----------------------------------------------------------------------------- matching
@pytest.fixture(scope="module")
def hydra_conf() -> Iterator[None]:
    with hydra_conf_single_thread():
        yield


def preset_run(*overrides: str) -> Run:
    """A finished run of ``sst-train <overrides>``, its config.json as sst-train writes it."""
    cfg = compose_with_hydra(list(overrides))
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    record = {**run_info(job, choices), **OmegaConf.to_container(job, resolve=True)}
    record["choices"] = choices
    summary = {"finished": True, "final_test_acc": 70.0, "best_test_acc": 71.0}
    return Run(" ".join(overrides), "finished", record, summary)


def rows_matching(run: Run, name: str) -> list[str]:
    table = load_paper_table(name)
    density = float(run.value("density"))
    return [
        row.label
        for row in table.rows
        if density in row.values and run_matches(run, table.criteria(row), density)
    ]


SRIGL_RIGL = ("sparsity=rigl", "~sparsity.gamma_sal")  # the SRigL recipe with RigL (docs)


@pytest.mark.parametrize(
    ("overrides", "table", "rows"),
    [
        # each preset's own run lands in its own table
        (("experiment=srigl_resnet18_cifar10",), "srigl-resnet18-cifar10", ["SRigL"]),
        (("experiment=srigl_wrn22_2_cifar10",), "srigl-wrn22-2-cifar10", ["SRigL"]),
        (("experiment=srigl_resnet50_imagenet",), "srigl-resnet50-imagenet", ["SRigL"]),
        (("experiment=srigl_vit_b16_imagenet",), "srigl-vit-b16-imagenet", ["SRigL"]),
        (("experiment=rigl_resnet50_imagenet",), "rigl-resnet50-imagenet", ["RigL (ERK)"]),
        (("experiment=rigl_wrn22_2_cifar10",), "rigl-wrn22-2-cifar10", ["RigL"]),
        (
            ("experiment=lr_rewinding_resnet56_cifar10",),
            "lr-rewinding-resnet56-cifar10",
            ["LR rewinding"],
        ),
        (
            ("experiment=lr_rewinding_resnet56_cifar10", "sparsity=fine_tuning"),
            "lr-rewinding-resnet56-cifar10",
            ["Fine-tuning"],
        ),
        (
            ("experiment=srigl_resnet18_cifar10", "sparsity.gamma_sal=0"),
            "srigl-resnet18-cifar10",
            ["SRigL without ablation"],
        ),
        # the SRigL recipe's RigL (the command docs/reproducing.md gives)
        (("experiment=srigl_resnet18_cifar10", *SRIGL_RIGL), "srigl-resnet18-cifar10", ["RigL"]),
        (("experiment=srigl_wrn22_2_cifar10", *SRIGL_RIGL), "srigl-wrn22-2-cifar10", ["RigL"]),
        (
            ("experiment=srigl_resnet50_imagenet", *SRIGL_RIGL, "sparsity.density=0.2"),
            "srigl-resnet50-imagenet",
            ["RigL"],
        ),
        # ... the 4096-batch RigL preset's RigL is not the SRigL ResNet-50 table's RigL
        (
            ("experiment=rigl_resnet50_imagenet", "sparsity.density=0.2"),
            "srigl-resnet50-imagenet",
            [],
        ),
        (
            ("experiment=srigl_resnet50_imagenet", *SRIGL_RIGL, "sparsity.density=0.2"),
            "rigl-resnet50-imagenet",
            [],
        ),
        # ... nor are the two WRN-22-2 recipes' RigL runs each other's
        (("experiment=rigl_wrn22_2_cifar10",), "srigl-wrn22-2-cifar10", []),
        (("experiment=srigl_wrn22_2_cifar10", *SRIGL_RIGL), "rigl-wrn22-2-cifar10", []),
        # the RigL WRN-22-2 "Pruning" row is ERK magnitude pruning, not uniform GMP
        (
            (
                "experiment=rigl_wrn22_2_cifar10",
                f"{METHOD}=static",
                "sparsity=gmp",
                "sparsity.distribution=uniform",
            ),
            "rigl-wrn22-2-cifar10",
            [],
        ),
        (
            (
                "experiment=rigl_wrn22_2_cifar10",
                f"{METHOD}=static",
                "sparsity=gmp",
                "sparsity.distribution=erk",
            ),
            "rigl-wrn22-2-cifar10",
            ["Pruning"],
        ),
    ],
)
def test_a_row_matches_only_its_papers_recipe(hydra_conf, overrides, table, rows) -> None:
    assert rows_matching(preset_run(*overrides), table) == rows


def test_output_shows_the_settings_each_row_matched_on(tmp_path: Path, capsys) -> None:
    assert sst_table([str(tmp_path), "--paper", "srigl-resnet50-imagenet"]) == 0
    out = capsys.readouterr().out
    assert (
        "A run counts for a cell when it has the cell's density and these settings "
        "(dataset=imagenet, model=resnet50, trainer.batch_size=512 in every row):" in out
    )
    assert "- RigL: method=rigl, distribution=erk, sparsity.delta_t=800." in out
    assert sst_table([str(tmp_path), "--paper", "rigl-wrn22-2-cifar10"]) == 0
    assert "- Pruning: method=gmp, distribution=erk." in capsys.readouterr().out


# ----------------------------------------------------------------------------- docs
DOC = Path(__file__).resolve().parents[1] / "docs" / "reproducing.md"


def doc_commands() -> list[list[str]]:
    """The ``sst-train`` commands of docs/reproducing.md, continuation lines joined, comments
    and ``-m`` dropped."""
    blocks = re.findall(r"```\n(.*?)```", DOC.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["sst-train"]:
            commands.append([w for w in words[1:] if w != "-m"])
    return commands


def test_reproducing_doc_names_each_tables_metric() -> None:
    sections = DOC.read_text().split("\n## ")
    for name in paper_table_names():
        table = load_paper_table(name)
        section = next(s for s in sections if f"`{name}`" in s)
        assert f"**Metric: `{table.metric}`" in section, name
        if table.experiment:
            assert f"experiment={table.experiment}" in section, name


@pytest.mark.parametrize("command", doc_commands(), ids=" ".join)
def test_reproducing_doc_commands_compose(hydra_conf, command) -> None:
    """Each command of docs/reproducing.md composes into a config sst-train accepts."""
    cfg = compose_with_hydra(command)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    check_config(job)
