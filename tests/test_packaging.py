"""A wheel of sst holds every package, the configs (built from the top-level ``conf/``) and
the published tables; installed (not editable) in a fresh virtualenv, its ``sst-train`` runs
the default job from a folder outside the checkout, and ``sst-table``/``sst-plot`` read it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from tabletext import unpadded

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip"]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_ships() -> None:
    """A new subpackage of sst must be added to [tool.setuptools] packages."""
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sst").rglob("__init__.py")
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert pyproject()["tool"]["setuptools"]["package-dir"] == {"sst.conf": "conf"}


def test_scripts_are_declared() -> None:
    scripts = pyproject()["project"]["scripts"]
    assert set(scripts) >= {"sst-train", "sst-table", "sst-plot", "sst-sweep"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "WANDB_SILENT": "true", **extra}


@pytest.mark.slow
def test_wheel_installs_and_runs_the_default_job(tmp_path: Path) -> None:
    """The wheel goes into a fresh virtualenv with ``--no-deps``; the dependencies come from
    this interpreter's site-packages through a ``.pth`` file (no download, and the wheel's
    own ``sst`` comes first on the path, never the checkout)."""
    wheels = tmp_path / "wheels"
    build = ROOT / "build"  # setuptools builds in the tree: leave no stale copy behind
    had_build = build.exists()
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(wheels)],
        check=True,
        env=clean_env(),
    )
    if not had_build:
        shutil.rmtree(build, ignore_errors=True)
    (wheel,) = wheels.glob("sst-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sst/conf/config.yaml" in names
    assert "sst/conf/experiment/rigl_method/rigl.yaml" in names
    assert "sst/paper_tables/srigl-resnet18-cifar10.yaml" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "sst_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*PIP, "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        env=clean_env(),
    )

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    where = subprocess.run(
        [python, "-c", "import sst, sst.train; print(sst.__file__); print(sst.train.CONFIG_DIR)"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(line.startswith(site) for line in where), where

    def run(*command: str) -> str:
        done = subprocess.run(
            [str(venv / "bin" / command[0]), *command[1:]],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = run("sst-train", "trainer.epochs=5", "trainer.progress_bar=false")
    assert "sst: finished digits-mlp-srigl-d0.1-s0" in out
    (run_dir,) = (work / "outputs" / "runs").iterdir()
    assert (run_dir / "summary.json").exists()
    assert "| digits | mlp | srigl | 90% | none |" in unpadded(run("sst-table"))
    assert "SRigL without ablation" in run("sst-table", "--paper", "srigl-resnet18-cifar10")
    run("sst-plot", "curves", str(run_dir), "-o", str(work / "curves"))
    assert (work / "curves.png").stat().st_size > 0
    assert "parameters:" in run("sst-sweep", "experiment=srigl_resnet18_cifar10")
