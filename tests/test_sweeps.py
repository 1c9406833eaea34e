"""Sweeps (``sst-train -m``) on every local launcher: one run folder per job, a relaunch
skips finished jobs and resumes unfinished ones, and a submitit job that gets SIGUSR2 (a
SLURM time limit) saves a checkpoint, is requeued and resumes into the same folder and W&B
run.

Every test here starts Python processes that import torch and train (tens of seconds each,
minutes on a busy 2-core machine): they are marked slow (``pytest -m slow``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runs import QUICK, alive

from sst.study.results import collect

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
GRID = [*QUICK, "logger=none", "seed=0,1"]


def has_plugin(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(f"hydra_plugins.{name}") is not None
    except ModuleNotFoundError:
        return False


def env() -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, "WANDB_SILENT": "true"}


def sweep(overrides: list[str], output_dir: Path, timeout: int = 300) -> str:
    """Runs ``sst-train -m <overrides>`` into ``output_dir``; returns its stdout+stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "sst.train", "-m", *overrides, f"output_dir={output_dir}"],
        cwd=output_dir,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def summaries(output_dir: Path) -> dict[str, float]:
    """Run folder name -> summary.json mtime, for the finished runs."""
    runs = collect([output_dir / "runs"]).runs
    return {Path(r.source).name: (Path(r.source) / "summary.json").stat().st_mtime for r in runs}


def check_sweep_and_relaunch(launcher: str, output_dir: Path) -> None:
    out = sweep([*GRID, f"launcher={launcher}"], output_dir)
    found = collect([output_dir / "runs"])
    assert not found.problems, out
    assert sorted(r.value("seed") for r in found.runs) == [0, 1]
    assert len({r.source for r in found.runs}) == 2  # one folder per job
    first = summaries(output_dir)

    # interrupted after its last checkpoint: the relaunch resumes it, the other is skipped
    interrupted = next(r for r in found.runs if r.value("seed") == 1)
    (Path(interrupted.source) / "summary.json").unlink()
    out = sweep([*GRID, f"launcher={launcher}"], output_dir)
    assert out.count("run already finished, skipping") == 1, out
    again = summaries(output_dir)
    assert set(again) == set(first)
    seed0 = next(r for r in found.runs if r.value("seed") == 0)
    assert again[Path(seed0.source).name] == first[Path(seed0.source).name]
    log = (Path(interrupted.source) / "train.log").read_text()
    assert "resumed from" in log
    records = sorted((output_dir / "sweeps").glob("*/multirun.yaml"))
    assert len(records) == 2  # one per sweep, the first not overwritten by the second


def test_sequential_launcher(tmp_path: Path) -> None:
    check_sweep_and_relaunch("local", tmp_path)


@pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"), reason="hydra-joblib-launcher")
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path: Path) -> None:
    check_sweep_and_relaunch("joblib", tmp_path)
    sources = set()
    for run in collect([tmp_path / "runs"]).runs:
        config = json.loads((Path(run.source) / "config.json").read_text())
        assert "launcher=joblib" in config["overrides"]
        sources.add(run.source)
    assert len(sources) == 2


def submit_processes(folder: Path) -> list[int]:
    """Pids of the submitit task processes (``submitit.core._submit``) working in ``folder``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmdline and str(folder) in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not has_plugin("hydra_submitit_launcher"), reason="hydra-submitit-launcher")
def test_submitit_local_launcher(tmp_path: Path) -> None:
    out = sweep([*GRID, "launcher=submitit_local"], tmp_path)
    found = collect([tmp_path / "runs"])
    assert sorted(r.value("seed") for r in found.runs) == [0, 1] and not found.problems, out
    assert (tmp_path / "runs" / ".submitit").is_dir()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(not has_plugin("hydra_submitit_launcher"), reason="hydra-submitit-launcher")
def test_preempted_submitit_job_is_requeued_and_resumes(tmp_path: Path) -> None:
    overrides = [
        "trainer.epochs=15",
        "trainer.progress_bar=false",
        "trainer.log_every=10",
        "sparsity.delta_t=10",
        "logger=wandb",
        "seed=0",
        "launcher=submitit_local",
    ]
    command = [sys.executable, "-m", "sst.train", "-m", *overrides, f"output_dir={tmp_path}"]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 240
        checkpoint = None
        while checkpoint is None and time.monotonic() < deadline and proc.poll() is None:
            found = list((tmp_path / "runs").glob("*/checkpoints/last.pt"))
            checkpoint = found[0] if found else None
            time.sleep(0.05)
        assert checkpoint is not None, "the job never wrote a checkpoint"
        run_dir = checkpoint.parent.parent
        (pid,) = submit_processes(tmp_path)
        os.kill(pid, signal.SIGUSR2)  # what submitit has SLURM send before the time limit
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output.decode()

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 15
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log
    logs = (tmp_path / "runs" / ".submitit").rglob("*_log.*")
    submitit_logs = "".join(p.read_text() for p in logs)
    assert "this job is preempted" in submitit_logs and "Requeued job" in submitit_logs
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    steps = [r["step"] for r in records]
    kinds = [(r["step"], tuple(sorted(r))) for r in records]  # train and eval records
    assert steps == sorted(steps) and len(kinds) == len(set(kinds))  # nothing logged twice
    assert steps[-1] == summary["steps"]
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(a.name.endswith(run_id) for a in attempts)


def lock_holders(output_dir: Path) -> dict[Path, int]:
    """Run folder -> pid of the process whose lock it holds (``pid N on host ...``)."""
    holders = {}
    for lock in (output_dir / "runs").glob("*/.lock"):
        text = lock.read_text().split()
        if len(text) >= 2 and text[0] == "pid":
            holders[lock.parent] = int(text[1])
    return holders


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"), reason="hydra-joblib-launcher")
def test_joblib_workers_stop_and_save_when_the_sweep_is_terminated(tmp_path: Path) -> None:
    """SIGTERM to a joblib sweep's main process kills it, not its workers: each worker sees
    its parent die, saves a checkpoint, releases its run folder's lock and exits within
    seconds; the relaunched sweep resumes both runs."""
    grid = [
        # long enough that neither run finishes before the signal (20 epochs took 1.5 s;
        # a run finished before it leaves no stop checkpoint to check)
        "trainer.epochs=200",
        "trainer.batch_size=32",
        "trainer.checkpoint_every_epochs=1000",  # the only checkpoint is the stop's
        "trainer.progress_bar=false",
        "trainer.log_every=10",
        "logger=none",
        "seed=0,1",
        "launcher=joblib",
    ]
    command = [sys.executable, "-m", "sst.train", "-m", *grid, f"output_dir={tmp_path}"]
    output = (tmp_path / "sweep.out").open("w")  # not a pipe: the workers inherit it
    proc = subprocess.Popen(command, cwd=tmp_path, env=env(), stdout=output, stderr=output)
    holders: dict[Path, int] = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            holders = lock_holders(tmp_path)
            logged = [p for p in holders if (p / "metrics.jsonl").exists()]
            if len(logged) == 2:
                break
            time.sleep(0.1)
        assert len(holders) == 2, "the two jobs never started training"
        assert proc.pid not in holders.values()  # the jobs train in the workers
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        stop_by = time.monotonic() + 15
        while any(alive(pid) for pid in holders.values()) and time.monotonic() < stop_by:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in holders.values()), "orphaned workers still run"
    finally:
        output.close()
        for pid in [proc.pid, *holders.values()]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    for run_dir in holders:
        assert (run_dir / "checkpoints" / "last.pt").is_file()
        assert (run_dir / ".lock").read_text() == ""  # released by the process, not by death
        assert not (run_dir / "summary.json").exists()

    sweep(grid, tmp_path)
    for run_dir in holders:
        assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 200
        assert "resumed from" in (run_dir / "train.log").read_text()
