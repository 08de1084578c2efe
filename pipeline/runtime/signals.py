"""SIGUSR1/SIGTERM as a request to stop cleanly: SLURM's warning before a time limit or preemption.

Every stage command calls :func:`catch_from_start` on its first line, before the heavy imports, so a
signal that arrives while torch loads or a model is read is not fatal:

- cooperative stages (train, distill, generate) only record it; :class:`StopSignals` picks it up and
  the stage stops at its next safe point (an optimiser step after a checkpoint, the end of a batch);
- stages that are safe to kill at any moment (convert, export, evaluate: they publish atomically) stop
  at once (``immediate=True``).

Either way the process exits with ``EXIT_REQUEUE`` (75). :func:`run_main` then leaves the requeue
marker that ``slurm/env.sh`` reads (``$CALO_REQUEUE_MARKER``): under ``srun --kill-on-bad-exit`` the first
rank to exit makes srun kill the others, so srun's own exit code no longer says why the step ended.
What the wrapper does with a stop: SIGUSR1 or a time limit requeues the job; SIGTERM (scancel, the time
limit itself, preemption) never does, under sbatch and under ``pipeline.launch`` alike.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from pipeline.runtime.exit_codes import EXIT_REQUEUE
from pipeline.runtime.files import atomic_write_bytes, utc_now

SIGNALS = ("SIGUSR1", "SIGTERM")
REQUEUE_MARKER_VARIABLE = "CALO_REQUEUE_MARKER"

_early: list[str] = []  # the first stop signal caught before a StopSignals context (see catch_from_start)


def _record(signum: int, frame: Any) -> None:
    if not _early:
        _early.append(signal.Signals(signum).name)


def _exit_now(signum: int, frame: Any) -> None:
    _record(signum, frame)
    raise SystemExit(EXIT_REQUEUE)


def catch_from_start(*, immediate: bool = False) -> None:
    """Catch SIGUSR1/SIGTERM from here on: record them for :class:`StopSignals`, or (``immediate``) exit 75."""
    for name in SIGNALS:
        signal.signal(getattr(signal, name), _exit_now if immediate else _record)


class StopSignals:
    """Record SIGUSR1/SIGTERM (SLURM's warning before time-out or preemption) instead of dying.

    Use as a context manager; ``received`` names the first signal caught, including one caught by
    :func:`catch_from_start` before the context began. Training checks it at every optimiser step
    (generation after every batch), saves and exits.
    """

    def __init__(self) -> None:
        self.received: str | None = _early[0] if _early else None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        for name in SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def write_requeue_marker(reason: str) -> Path | None:
    """Leave ``$CALO_REQUEUE_MARKER`` (when the SLURM wrapper set it): this process stopped resumably."""
    path = os.environ.get(REQUEUE_MARKER_VARIABLE)
    if not path:
        return None
    marker = Path(path)
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(marker, f"{utc_now()} pid {os.getpid()}: {reason}\n".encode())
    return marker


def run_main(main: Callable[[], int | None]) -> None:
    """Run a stage command's ``main`` and exit with its code; exit 75 also writes the requeue marker."""
    try:
        code = main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    code = int(code or 0)
    if code == EXIT_REQUEUE:
        write_requeue_marker(f"stopped ({_early[0] if _early else 'time limit or own decision'})")
    sys.exit(code)
