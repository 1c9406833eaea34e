"""A user's own model, dataset and experiment from outside sst (docs/extension_example/):
Hydra's search path finds the configs, ``_target_`` the code; the run trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from runs import compose_run, compose_with_hydra, hydra_conf_single_thread

from sst.launch.run import run as train

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "extension_example"
SEARCH = f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"


@pytest.fixture(autouse=True)
def user_package(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))  # as if the user's package were installed


def test_user_experiment_trains(tmp_path: Path) -> None:
    overrides = [SEARCH, "experiment=stripes_study", "logger=none", "trainer.progress_bar=false"]
    cfg, run_dir, choices = compose_run([*overrides, "trainer.epochs=2"], tmp_path)
    assert (choices["model"], choices["dataset"]) == ("tiny_cnn", "stripes")
    summary = train(cfg, run_dir, choices)
    assert summary["finished"] and summary["model"] == "tiny_cnn"
    assert {row["layer"] for row in summary["layers"]} == {"0", "2", "6"}
    assert run_dir.name.startswith("stripes-tiny_cnn-srigl-d0.1-s0-")


def test_user_experiment_declares_its_sweep() -> None:
    with hydra_conf_single_thread():
        cfg = compose_with_hydra([SEARCH, "experiment=stripes_study"])
    assert dict(cfg.hydra.sweeper.params) == {
        "sparsity": "srigl,rigl",
        "sparsity.density": "0.1,0.05",
    }
