"""Stop signals: SIGTERM (preemption), SIGUSR1 (SLURM's time-limit warning) and submitit's
preemption signal make the loop save a checkpoint and stop (``Preempted``).

A run in a worker of a Python process pool (the joblib launcher's loky workers) also stops
so when the process that started it dies: a SIGTERM to the sweep's main process kills it
but not its workers, which would go on training, holding their run folders' locks. A
watchdog thread (``ParentWatch``) sees the parent's death, as a changed parent process id,
and takes the SIGTERM path: checkpoint, stop, locks released, a relaunch resumes. A worker
between jobs ends too (``pool_job``): loky would keep it waiting for a next job that never
comes, for joblib's ``idle_worker_timeout`` (300 s by default).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sst import dist


class Preempted(Exception):
    """Raised after the checkpoint was saved on a stop signal.

    ``handler`` is the signal's handler from before the loop took the signal over (a
    launcher's, e.g. submitit's requeue); ``hand_over`` calls it once the run has closed.
    """

    def __init__(self, message: str, signum: int | None = None, handler=None) -> None:
        super().__init__(message)
        self.signum = signum
        self.handler = handler

    def hand_over(self) -> None:
        if self.handler is not None:
            self.handler(self.signum, None)


def stop_signals() -> list[int]:
    """SIGTERM, SIGUSR1 and, inside a submitit job, submitit's preemption signal (SIGUSR2
    unless ``SUBMITIT_PREEMPT_SIGNAL`` names another), whose own handler requeues the job:
    it is handed the signal once the checkpoint is saved (``Preempted.hand_over``)."""
    wanted = [signal.SIGTERM, getattr(signal, "SIGUSR1", None)]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        wanted.append(getattr(signal, f"SIG{name}", None))
    return list(dict.fromkeys(s for s in wanted if s is not None))


class ParentWatch:
    """Calls ``on_orphaned`` once if the parent process dies while watching (checked every
    ``interval`` seconds from a daemon thread); watches only in a worker of a Python process
    pool (``multiprocessing.parent_process()`` is set), never in a run started from a shell,
    which ``nohup`` may leave running on purpose."""

    def __init__(self, on_orphaned: Callable[[], None], interval: float = 0.5) -> None:
        self.on_orphaned = on_orphaned
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def wanted() -> bool:
        return multiprocessing.parent_process() is not None

    def start(self) -> None:
        if self._thread is not None or not self.wanted():
            return
        parent = os.getppid()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(parent,), name="sst-parent-watch", daemon=True
        )
        self._thread.start()

    def _watch(self, parent: int) -> None:
        while not self._stop.wait(self.interval):
            if os.getppid() != parent:  # re-parented: the pool's process is gone
                self.on_orphaned()
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def exit_orphan(signum: int | None, _frame: Any) -> None:
    """Ends a pool worker whose parent died, once its run has closed (checkpoint saved,
    lock released): exit code 124, as ``sst-train`` stopped by a signal."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(124)


class _IdleWorkerExit:
    """Ends this process once its parent has died and no job is running in it (the jobs
    are counted by ``pool_job``)."""

    def __init__(self) -> None:
        self.jobs = 0
        self.orphaned = False
        self.lock = threading.Lock()
        self.watch: ParentWatch | None = None

    def enter(self) -> None:
        with self.lock:
            self.jobs += 1
            if self.watch is None:
                self.watch = ParentWatch(self._on_orphaned)
                self.watch.start()

    def leave(self) -> None:
        with self.lock:
            self.jobs -= 1
            self._exit_if_idle()

    def _on_orphaned(self) -> None:
        with self.lock:
            self.orphaned = True
            self._exit_if_idle()

    def _exit_if_idle(self) -> None:
        if self.orphaned and self.jobs == 0:
            exit_orphan(None, None)


_idle_worker_exit = _IdleWorkerExit()


@contextlib.contextmanager
def pool_job() -> Iterator[None]:
    """Wraps one job of a pool worker (a no-op in a process started from a shell): once the
    worker's parent has died, the worker exits as soon as no job is running in it, instead
    of idling until loky's timeout. A job still running finishes first; its run, if
    training, is stopped by its own ``ParentWatch``."""
    if not ParentWatch.wanted():
        yield
        return
    _idle_worker_exit.enter()
    try:
        yield
    finally:
        _idle_worker_exit.leave()


class StopSignals:
    """Catches the stop signals while ``installed``; ``agreed`` tells, after a step, the
    signal every rank agrees on (under DDP one step after the first rank received it, in a
    single process at once)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._vote = dist.StopVote()
        self._previous: dict[int, Any] = {}
        self._parent_watch = ParentWatch(self._on_orphaned)
        self.orphaned = False

    def _on_signal(self, signum, _frame) -> None:
        self.received = signum

    def _on_orphaned(self) -> None:
        self.orphaned = True
        if self.received is None:
            self.received = signal.SIGTERM  # as if the dying parent had forwarded it

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {}
        try:
            for sig in stop_signals():
                with contextlib.suppress(ValueError):  # not the main thread
                    previous[sig] = signal.signal(sig, self._on_signal)
            self._previous = dict(previous)
            self._parent_watch.start()
            yield
        finally:
            self._parent_watch.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def agreed(self) -> int | None:
        return self._vote.poll(self.received)

    def close(self) -> None:
        """Completes the ranks' last vote (every rank stopped at the same step)."""
        self._vote.close()

    def previous_handler(self, signum: int) -> Callable | None:
        """The handler of ``signum`` before ``installed`` took it over, if it was a
        function (submitit's requeue), else None; for a run whose parent died, ``exit_orphan``
        (which ends the worker: it would wait for its dead parent's next job)."""
        if self.orphaned:
            return exit_orphan
        handler = self._previous.get(signum)
        return handler if callable(handler) else None
