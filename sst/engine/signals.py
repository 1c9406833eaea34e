"""Stop signals: SIGTERM (preemption), SIGUSR1 (SLURM's time-limit warning) and submitit's
preemption signal make the loop save a checkpoint and stop (``Preempted``)."""

from __future__ import annotations

import contextlib
import os
import signal
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


class StopSignals:
    """Catches the stop signals while ``installed``; ``agreed`` tells, after a step, the
    signal every rank agrees on (under DDP one step after the first rank received it, in a
    single process at once)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._vote = dist.StopVote()
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum, _frame) -> None:
        self.received = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {}
        try:
            for sig in stop_signals():
                with contextlib.suppress(ValueError):  # not the main thread
                    previous[sig] = signal.signal(sig, self._on_signal)
            self._previous = dict(previous)
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def agreed(self) -> int | None:
        return self._vote.poll(self.received)

    def close(self) -> None:
        """Completes the ranks' last vote (every rank stopped at the same step)."""
        self._vote.close()

    def previous_handler(self, signum: int) -> Callable | None:
        """The handler of ``signum`` before ``installed`` took it over, if it was a
        function (submitit's requeue), else None."""
        handler = self._previous.get(signum)
        return handler if callable(handler) else None
