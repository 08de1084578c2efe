"""The submitit callable of one stage: run ``python -m <stage> --config ...`` in every task, requeue on stop.

Signals: ``pipeline.launch`` sets ``SUBMITIT_PREEMPT_SIGNAL=USR1``, so SLURM's warning before the time limit
(``--signal=USR1@<launch.signal_seconds>``) and submitit's preemption/timeout hook use the signal our stages
already treat as "checkpoint now and exit 75". On rank 0 submitit's handler calls :meth:`StageJob.checkpoint`,
which forwards SIGUSR1 to the stage process, waits for it to exit and returns the same call to resubmit;
submitit then requeues the job (``scontrol requeue``: same job id, so ``afterok`` dependents keep waiting).
The other ranks stop with rank 0 (the stages agree on stopping at the next step).

What the stage's exit means for the job is :mod:`pipeline.runtime.requeue_policy`'s decision, the same as
under the ``slurm/`` scripts: done; requeue (a stop without SIGTERM: when submitit did not signal it, e.g. the
stage's own time limit, the job requeues itself by raising submitit's signal in-process); stopped by SIGTERM
or out of requeues (the job fails, launch again to resume); failed (``StageFailed``, so that ``afterok``
dependents never start). Every stage resumes from disk, so a requeued or relaunched job runs the same command.
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
from pipeline.runtime.requeue_policy import MAX_REQUEUES, Outcome, decide


class StageFailed(RuntimeError):
    """The stage process exited with an error (not done, not resumable)."""


class StageJob(submitit.helpers.Checkpointable):
    """Run one stage's command in this task; picklable, and resubmitted as a fresh copy on checkpoint."""

    def __init__(self, stage: str, argv: list[str], cwd: str, max_requeues: int = MAX_REQUEUES, requeues: int = 0,
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
        decision = decide(code, terminated=self._terminated, requeues=self.requeues, max_requeues=self.max_requeues)
        if decision.outcome is Outcome.DONE:
            return {"stage": self.stage, "returncode": 0, "requeues": self.requeues}
        if decision.outcome is Outcome.REQUEUE:
            return self._requeue_self(code)
        if decision.outcome is Outcome.STOPPED:
            raise StageFailed(f"stage {self.stage}: {decision.reason} (launch again)")
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
        code = self._stop_child()  # None: no stage process; 0: it finished meanwhile (re-running it is a no-op)
        decision = decide(EXIT_REQUEUE if code in (0, None) else code, terminated=False, requeues=self.requeues,
                          max_requeues=self.max_requeues)
        if decision.outcome is not Outcome.REQUEUE:
            print(f"launch: {self.stage}: {decision.reason} (launch.max_requeues {self.max_requeues})",
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
