"""The one stop-and-requeue policy of every job, whether ``sbatch slurm/*.sh`` or
``pipeline.launch`` sent it.

A stage that stops early saves what a re-run resumes from and exits 75 (``EXIT_REQUEUE``). What
happens to its job then depends on why it stopped:

- SIGUSR1 (SLURM's warning ``WARNING_SECONDS`` before the time limit, or
  ``scancel --signal=USR1``) or the stage's own ``--time-limit``: the job is requeued (same job id,
  so ``afterok`` dependents keep waiting) and resumes, at most ``MAX_REQUEUES`` times;
- SIGTERM (plain ``scancel``, preemption, the time limit itself): the job stops and is not
  requeued; run the same command again to resume;
- any other exit code fails the job, so that its dependents never start.

The sbatch scripts apply it through :mod:`pipeline.launch.job_step`, ``pipeline.launch`` through
:class:`pipeline.launch.stage_job.StageJob`; both read the decision from :func:`decide`.
"""

from __future__ import annotations

import enum
import re
import signal
from dataclasses import dataclass
from typing import Optional

from pipeline.runtime.exit_codes import EXIT_REQUEUE

WARNING_SIGNAL = "USR1"  # sent WARNING_SECONDS before the time limit (#SBATCH --signal=USR1@300)
WARNING_SECONDS = 300
MAX_REQUEUES = 20  # per job (sbatch) or per stage (pipeline.launch)
TIME_MARGIN_SECONDS = 180  # a stage's --time-limit is the job's remaining time less this
MIN_TIME_LIMIT_SECONDS = 60

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Outcome(enum.Enum):
    DONE = "done"
    REQUEUE = "requeue"  # stopped with a checkpoint: requeue the job, it resumes
    # stopped with a checkpoint, not requeued: run the same command again to resume
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str


def stopped(returncode: Optional[int]) -> bool:
    """Whether a stage ended resumably: exit 75, or killed by SIGUSR1/SIGTERM before it could
    handle them."""
    return returncode == EXIT_REQUEUE or returncode in tuple(-s for s in STOP_SIGNALS)


def decide(returncode: Optional[int], *, terminated: bool, requeues: int,
           max_requeues: int = MAX_REQUEUES, in_job: bool = True) -> Decision:
    """What to do with a job whose stage exited with ``returncode``.

    ``terminated``: the job received SIGTERM; ``requeues``: how often it was requeued already;
    ``in_job``: it runs under a scheduler that can requeue it (else a stop only says "run the same
    command again").
    """
    if returncode == 0:
        return Decision(Outcome.DONE, "done")
    if not stopped(returncode):
        return Decision(Outcome.FAILED, f"failed (exit {returncode})")
    if terminated:
        return Decision(Outcome.STOPPED, "stopped by SIGTERM (cancelled, preempted or out of "
                                         "time): not requeueing; run the same command again to "
                                         "resume")
    if not in_job:
        return Decision(Outcome.STOPPED, "stopped early and not in a batch job: run the same "
                                         "command again to resume")
    if requeues >= max_requeues:
        return Decision(Outcome.STOPPED, f"already requeued {requeues} times (at most "
                                         f"{max_requeues}): not requeueing; run the same command "
                                         "again to resume")
    return Decision(Outcome.REQUEUE, "stopped early (exit 75, checkpoint written): requeueing")


_SQUEUE_TIME = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_time_left(text: str) -> Optional[int]:
    """Seconds of SLURM's ``[days-][hours:]minutes:seconds`` (squeue ``%L``); None for UNLIMITED or
    junk."""
    match = _SQUEUE_TIME.match(text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def stage_time_limit(seconds_left: Optional[int],
                     margin: int = TIME_MARGIN_SECONDS) -> Optional[int]:
    """The ``--time-limit`` a stage gets: the job's time left less ``margin``, at least a minute."""
    if seconds_left is None:
        return None
    return max(seconds_left - margin, MIN_TIME_LIMIT_SECONDS)
