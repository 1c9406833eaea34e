"""Where sst's Hydra configs are."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """The configs: ``sst/conf`` inside an installed wheel (package data built from the
    checkout's ``conf/``), else the checkout's ``conf/`` (source tree, editable install)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"sst's configs are missing: no config.yaml in {package}/conf")


CONFIG_DIR = config_dir()
