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


def test_the_command_line_check_finds_options_on_the_search_path() -> None:
    """``sst-train`` checks every group choice before Hydra runs (close matches for typos);
    the check looks in the search path's folders too: it used to reject ``model=tiny_cnn``
    there, so the documented command exited with code 2."""
    from sst.config import CONFIG_DIR, ConfigError
    from sst.config.keys import check_command_line

    check_command_line([SEARCH, "model=tiny_cnn", "dataset=stripes"], CONFIG_DIR)
    check_command_line(["-m", SEARCH, "experiment=stripes_study"], CONFIG_DIR)
    with pytest.raises(ConfigError, match="Did you mean model=tiny_cnn"):
        check_command_line([SEARCH, "model=tiny_cnnn"], CONFIG_DIR)
    with pytest.raises(ConfigError, match="model=tiny_cnn is not an option"):
        check_command_line(["model=tiny_cnn"], CONFIG_DIR)  # no search path: not found
    with pytest.raises(ConfigError, match=r"Did you mean trainer\.epochs"):
        check_command_line([SEARCH, "model=tiny_cnn", "trainer.epochz=3"], CONFIG_DIR)
