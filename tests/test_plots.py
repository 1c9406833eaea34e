"""sst-plot: every figure is written as PNG and PDF, non-empty, with labelled axes, from
fabricated sweeps and from one real run folder (metrics and checkpoint masks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fabricated import make_run
from runs import QUICK, compose_run

from sst.launch.run import run as train
from sst.study import plots
from sst.study.plot_cli import main as sst_plot
from sst.study.results import aggregate, collect, read_run


@pytest.fixture(scope="module")
def srigl_run(tmp_path_factory) -> Path:
    """A real few-second SRigL run on digits with ablation strong enough to show."""
    out = tmp_path_factory.mktemp("real")
    cfg, run_dir, choices = compose_run(
        [*QUICK, "logger=none", "sparsity.gamma_sal=0.9", "sparsity.density=0.05"], out
    )
    train(cfg, run_dir, choices)
    return run_dir


def assert_written(paths: list[Path]) -> None:
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert pdf.startswith(b"%PDF") and len(pdf) > 2000


def labels(fig) -> list[tuple[str, str]]:
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def test_accuracy_vs_sparsity(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for method, base in (("rigl", 90.0), ("srigl", 89.0)):
        for density in (0.1, 0.05, 0.01):
            for seed in range(3):
                make_run(root, method=method, density=density, seed=seed, acc=base - seed)
    make_run(root, method="dense", density=1.0, acc=95.0)
    groups = aggregate(collect([root]).runs)
    fig = plots.accuracy_vs_sparsity(groups)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert "sparsity" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["99", "95", "90"]
    assert ax.get_xlim()[0] > ax.get_xlim()[1]  # sparser to the right
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["rigl (n=3)", "srigl (n=3)"]
    assert_written(plots.save(fig, tmp_path / "fig" / "acc"))

    assert sst_plot(["accuracy", str(root), "-o", str(tmp_path / "cli" / "acc")]) == 0
    assert_written([tmp_path / "cli" / "acc.png", tmp_path / "cli" / "acc.pdf"])


def test_layer_densities(tmp_path: Path) -> None:
    runs = [
        read_run(make_run(tmp_path, distribution=d, density=0.1, acc=90.0))
        for d in ("erk", "uniform")
    ]
    fig = plots.layer_densities(runs, ["ERK", "uniform"])
    assert labels(fig) == [("layer", "density (kept fraction)")]
    heights = sorted(round(b.get_height(), 3) for b in fig.axes[0].patches)
    assert heights == [0.1, 0.1, 0.2, 0.2]
    assert_written(plots.save(fig, tmp_path / "layers"))


def test_real_run_figures(srigl_run: Path, tmp_path: Path) -> None:
    fig = plots.neurons_over_training(srigl_run)
    assert labels(fig) == [("step", "active neurons (fraction of layer)")]
    lines = fig.axes[0].get_lines()
    assert {line.get_label() for line in lines} == {"1", "3", "5"}
    assert_written(plots.save(fig, tmp_path / "neurons"))

    fig = plots.training_curves([srigl_run], ["SRigL"])
    assert labels(fig) == [("", "train loss"), ("step", "test accuracy (%)")]
    assert all(ax.get_lines() for ax in fig.axes)
    assert_written(plots.save(fig, tmp_path / "curves"))

    masks = torch.load(srigl_run / "checkpoints" / "last.pt", weights_only=True)["sparsity"]
    fig = plots.mask_image(srigl_run, "3")
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (256, 256)
    assert image.sum() == masks["masks"]["3"].sum().item()
    assert "input" in fig.axes[0].get_xlabel() and "output" in fig.axes[0].get_ylabel()
    assert_written(plots.save(fig, tmp_path / "mask"))


def test_cli_commands_and_errors(srigl_run: Path, tmp_path: Path, capsys) -> None:
    for command in (["neurons"], ["curves"], ["layers"], ["mask", "--layer", "1"]):
        out = tmp_path / command[0]
        assert sst_plot([command[0], str(srigl_run), *command[1:], "-o", str(out)]) == 0
        assert (out.with_suffix(".png")).stat().st_size > 0
    assert sst_plot(["mask", str(srigl_run), "--layer", "fc9", "-o", str(tmp_path / "x")]) == 2
    assert "masked layers are 1, 3, 5" in capsys.readouterr().err
    only_png = tmp_path / "png_only"
    assert sst_plot(["curves", str(srigl_run), "-o", str(only_png), "--formats", "png"]) == 0
    assert only_png.with_suffix(".png").exists() and not only_png.with_suffix(".pdf").exists()


def test_an_output_with_a_suffix_and_a_corrupt_checkpoint(srigl_run: Path, tmp_path, capsys):
    """``-o fig.png`` writes fig.png (not fig.png.png); svg is a format; a checkpoint that
    cannot be read is one line and exit code 2, not a traceback."""
    out = tmp_path / "fig.png"
    assert sst_plot(["curves", str(srigl_run), "-o", str(out), "--formats", "png", "svg"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "fig.svg"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        (broken / name).write_bytes((srigl_run / name).read_bytes())
    (broken / "checkpoints").mkdir()
    (broken / "checkpoints" / "last.pt").write_bytes(b"cut short")
    assert sst_plot(["mask", str(broken), "--layer", "1", "-o", str(tmp_path / "m")]) == 2
    assert "no checkpoint of this run can be read" in capsys.readouterr().err
