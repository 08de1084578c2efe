"""The submitit callable of one stage: run ``python -m <stage> --config ...`` in every task, requeue on stop.

Signals: ``pipeline.launch`` sets ``SUBMITIT_PREEMPT_SIGNAL=USR1``, so SLURM's warning before the time limit
(``--signal=USR1@<launch.signal_seconds>``) and submitit's preemption/timeout hook use the signal our stages
already treat as "checkpoint now and exit 75". On rank 0 submitit's handler calls :meth:`StageJob.checkpoint`,
which forwards SIGUSR1 to the stage process, waits for it to exit and returns the same call to resubmit;
submitit then requeues the job (``scontrol requeue``: same job id, so ``afterok`` dependents keep waiting).
The other ranks stop with rank 0 (the stages agree on stopping at the next step).

Exit codes of the stage process: 0 done; 75 (or killed by SIGUSR1/SIGTERM) stopped with a checkpoint, and
without a signal from submitit (a stage's own time limit) the job requeues itself by raising submitit's
signal in-process; anything else fails the job (``StageFailed``) so that ``afterok`` dependents never start.
SIGTERM (scancel, the time limit itself, preemption) means what it means under ``slurm/env.sh``: the stage
saves and stops, and the job is not requeued (it fails; launch again to resume). Every stage resumes from
disk, so a requeued or relaunched job simply runs the same command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import submitit

from pipeline.runtime.exit_codes import EXIT_REQUEUE

_STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StageFailed(RuntimeError):
    """The stage process exited with an error (not done, not resumable)."""


def stopped(returncode: Optional[int]) -> bool:
    """Whether a stage process ended resumably: exit 75, or killed by SIGUSR1/SIGTERM before handling it."""
    return returncode == EXIT_REQUEUE or returncode in tuple(-s for s in _STOP_SIGNALS)


class StageJob(submitit.helpers.Checkpointable):
    """Run one stage's command in this task; picklable, and resubmitted as a fresh copy on checkpoint."""

    def __init__(self, stage: str, argv: list[str], cwd: str, max_requeues: int = 20, requeues: int = 0,
                 poll_seconds: float = 0.5) -> None:
        self.stage, self.argv, self.cwd = stage, list(argv), cwd
        self.max_requeues, self.requeues, self.poll_seconds = max_requeues, requeues, poll_seconds
        self._proc: Optional[subprocess.Popen] = None
        self._terminated = False

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_proc", "_terminated")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _proc=None, _terminated=False)

    def _on_sigterm(self, previous: Any) -> Any:
        """A SIGTERM handler that remembers the signal, passes it to the stage and then to ``previous``."""
        def handler(signum: int, frame: Any) -> None:
            self._terminated = True
            if self._proc is not None and self._proc.returncode is None:
                self._proc.send_signal(signal.SIGTERM)
            if callable(previous):
                previous(signum, frame)
        return handler

    # ------------------------------------------------------------------ run
    def __call__(self) -> dict[str, Any]:
        fds = (int(os.environ["PMI_FD"]),) if os.environ.get("PMI_FD", "").isdigit() else ()  # srun --mpi=pmi2
        print(f"launch: {self.stage}: {' '.join(self.argv)} (requeue {self.requeues})", file=sys.stderr, flush=True)
        self._proc = subprocess.Popen(self.argv, cwd=self.cwd, pass_fds=fds,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
        previous = None
        if threading.current_thread() is threading.main_thread():  # where submitit runs it (handlers live there)
            previous = signal.signal(signal.SIGTERM, self._on_sigterm(signal.getsignal(signal.SIGTERM)))
        try:
            while self._proc.poll() is None:  # no blocking wait(): submitit's signal handler must not deadlock
                time.sleep(self.poll_seconds)
        finally:
            if self._proc.poll() is None:  # leaving on an exception: stop the stage with a checkpoint
                self._proc.send_signal(signal.SIGTERM)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        code = self._proc.returncode
        if code == 0:
            return {"stage": self.stage, "returncode": 0, "requeues": self.requeues}
        if stopped(code) and self._terminated:
            raise StageFailed(f"stage {self.stage}: stopped by SIGTERM (scancel, time limit or preemption; exit "
                              f"{code}): not requeued; launch again to resume")
        if stopped(code):
            return self._requeue_self(code)
        raise StageFailed(f"stage {self.stage}: `{' '.join(self.argv)}` exited with {code}")

    def _requeue_self(self, code: int) -> dict[str, Any]:
        """The stage stopped without submitit's signal: let submitit's own handler checkpoint and requeue."""
        outside = StageFailed(f"stage {self.stage}: stopped (exit {code}) outside a submitit job; run it again")
        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # no submitit job environment at all
            raise outside from None
        if env.global_rank != 0:
            return {"stage": self.stage, "returncode": code, "requeues": self.requeues}  # rank 0 requeues the job
        sig = getattr(signal, "SIG" + env.USR_SIG)
        if not callable(signal.getsignal(sig)):  # no submitit signal handler (e.g. its DebugExecutor)
            raise outside
        print(f"launch: {self.stage} stopped (exit {code}); requeueing through submitit", file=sys.stderr, flush=True)
        os.kill(os.getpid(), sig)  # submitit's handler runs now: checkpoint() -> requeue -> exits this process
        raise StageFailed(f"stage {self.stage}: stopped (exit {code}) but submitit did not requeue the job")

    # ------------------------------------------------------------------ checkpoint (submitit's hook, rank 0)
    def checkpoint(self, *args: Any, **kwargs: Any) -> Optional[submitit.helpers.DelayedSubmission]:
        """Make the stage checkpoint (SIGUSR1), wait for it, and return the same call to requeue (or None)."""
        code = self._stop_child()
        if code not in (0, None) and not stopped(code):
            print(f"launch: {self.stage} failed while checkpointing (exit {code}): not requeued",
                  file=sys.stderr, flush=True)
            return None
        if self.requeues >= self.max_requeues:
            print(f"launch: {self.stage}: requeued {self.requeues} times (launch.max_requeues): giving up",
                  file=sys.stderr, flush=True)
            return None
        again = StageJob(self.stage, self.argv, self.cwd, self.max_requeues, self.requeues + 1, self.poll_seconds)
        return submitit.helpers.DelayedSubmission(again)

    def _stop_child(self) -> Optional[int]:
        """SIGUSR1 to the stage process, then its exit code without reaping it (None if unknown)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        try:
            proc.send_signal(signal.SIGUSR1)
            # WNOWAIT leaves the child to Popen: a blocking Popen.wait() here could deadlock on its lock.
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # reaped by the interrupted poll() just now
            return proc.returncode
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
