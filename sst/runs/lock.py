"""One process at a time in a run folder.

Two launches of the same run (the same command twice, a sweep relaunched while its first
launch still runs) would train twice into one folder: every metrics record twice, two W&B
runs with one id. The first process holds an exclusive lock on ``<run>/.lock`` (``flock``)
for as long as it trains, with its pid, host and start time written in the file for the
message the second one gets. The operating system drops the lock when the process ends,
however it ends, so a lock file left by a killed process is stale and is simply taken over.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunFolderBusy(RuntimeError):
    """Another live process trains in this run folder."""


class RunLock:
    """``with RunLock(run_dir):`` holds the run folder for this process. A folder another
    live process holds raises ``RunFolderBusy``, or with ``wait`` blocks until it is free
    (students that share one distillation teacher wait for the one that trains it)."""

    def __init__(self, run_dir: str | Path, *, wait: bool = False) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.wait = wait
        self._handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            self._take(handle)
        except BaseException:  # busy, Ctrl-C while waiting, a full disk: never leak it
            handle.close()
            raise
        self._handle = handle
        return self

    def _take(self, handle) -> None:
        """Locks ``handle`` (or raises ``RunFolderBusy``) and writes who holds it."""
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                owner = handle.read().strip() or "an unknown process"
                if self.wait:
                    print(f"sst: waiting for {owner}, which trains {self.path.parent}")
                    fcntl.flock(handle, fcntl.LOCK_EX)
                else:
                    raise RunFolderBusy(
                        f"the run folder {self.path.parent} is in use by {owner}: the same run is "
                        "already training there. Wait for it to finish (a finished run is then "
                        f"skipped), or stop that process; {self.path} is released when it ends."
                    ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()} since {started}\n")
        handle.flush()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            # emptied, not deleted: a process waiting on this file must lock the file that
            # the next launch will open too
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.close()  # closing drops the flock
            self._handle = None
