"""A process-pool worker (a joblib sweep's loky worker) whose parent died: between jobs it
exits within a second; during a job it lets the job finish, then exits. Real processes: a
middle process forks two workers and is killed with SIGKILL, as a sweep's main process is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runs import alive

ROOT = Path(__file__).resolve().parent.parent

MIDDLE = """
import multiprocessing, sys, time
from pathlib import Path
from sst.engine.signals import pool_job

def idle(folder):
    with pool_job():
        pass
    (folder / "idle").write_text("")
    time.sleep(60)

def busy(folder):
    with pool_job():
        (folder / "busy").write_text("")
        while not (folder / "release").exists():
            time.sleep(0.05)
        (folder / "finished").write_text("")
    time.sleep(60)

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=f, args=(folder,)) for f in (idle, busy)]
    for w in workers:
        w.start()
    print(*(w.pid for w in workers), flush=True)
    time.sleep(60)
"""


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")
def test_an_orphaned_pool_worker_exits_when_no_job_runs_in_it(tmp_path: Path) -> None:
    script = tmp_path / "middle.py"
    script.write_text(MIDDLE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    middle = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    idle_pid, busy_pid = map(int, middle.stdout.readline().split())
    try:
        assert wait_until(lambda: (tmp_path / "idle").exists() and (tmp_path / "busy").exists(), 60)
        assert alive(idle_pid) and alive(busy_pid)
        middle.kill()  # the sweep's main process dies; its workers are re-parented
        middle.wait(timeout=10)
        assert wait_until(lambda: not alive(idle_pid), 5), "the idle worker still waits"
        time.sleep(1.0)
        assert alive(busy_pid), "a worker whose job runs must finish the job first"
        (tmp_path / "release").write_text("")
        assert wait_until(lambda: not alive(busy_pid), 5), "the worker outlived its job"
        assert (tmp_path / "finished").exists()
    finally:
        middle.stdout.close()
        for pid in (middle.pid, idle_pid, busy_pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
