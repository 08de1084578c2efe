"""SIGUSR1/SIGTERM as a request to stop cleanly: SLURM's warning before a time limit or preemption.

Stages check :attr:`StopSignals.received` between units of work (an optimiser step, a generation batch),
save what a re-run resumes from and exit with ``EXIT_REQUEUE`` (:mod:`pipeline.runtime.exit_codes`).
"""

from __future__ import annotations

import signal
from typing import Any


class StopSignals:
    """Record SIGUSR1/SIGTERM (SLURM's warning before time-out or preemption) instead of dying.

    Use as a context manager; ``received`` names the first signal caught. Training checks it at
    every optimiser step (generation after every batch), saves and exits.
    """

    SIGNALS = ("SIGUSR1", "SIGTERM")

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
