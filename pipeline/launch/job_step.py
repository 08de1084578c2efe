"""The job step of every ``slurm/*.sh`` script: run ``srun python -m <stage> ...``, then apply the
requeue policy.

    python -m pipeline.launch.job_step -- srun ... python -m pipeline.train --config ...
    # "--time-limit N" from the job's time left, or ""
    python -m pipeline.launch.job_step --time-limit-args

The batch script ``exec``s it (``run_requeueable`` in ``slurm/env.sh``), so signals sent to the
batch shell reach it: SIGUSR1 and SIGTERM are forwarded to srun, which passes them to every task.
When the step ends, a requeue marker left by a task that stopped resumably counts as exit 75: under
``srun --kill-on-bad-exit`` the first task to exit makes srun kill the others, so srun's exit code
describes the killed tasks, not the stop. :func:`pipeline.runtime.requeue_policy.decide` then says
whether ``scontrol requeue`` runs (exit 0) or the step's code is passed on. ``pipeline.launch``'s
jobs follow the same policy (:mod:`.stage_job`).

Environment: ``SLURM_JOB_ID``, ``SLURM_RESTART_COUNT``; ``CALO_MAX_REQUEUES`` (default
``requeue_policy.MAX_REQUEUES``), ``CALO_TIME_MARGIN`` (default ``TIME_MARGIN_SECONDS``),
``CALO_STATE_DIR`` (where markers go, default ``./.slurm-state``: every node must see it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.runtime.exit_codes import EXIT_REQUEUE
from pipeline.runtime.requeue_policy import (
    MAX_REQUEUES,
    TIME_MARGIN_SECONDS,
    Outcome,
    decide,
    parse_time_left,
    stage_time_limit,
)
from pipeline.runtime.signals import REQUEUE_MARKER_VARIABLE

_FORWARDED = (signal.SIGUSR1, signal.SIGTERM)


def log(message: str, env: Mapping[str, str] = os.environ) -> None:
    """``[date time] job 123 (restart 1): message`` on stdout, the job's log."""
    job = env.get("SLURM_JOB_ID")
    restart = f" (restart {env['SLURM_RESTART_COUNT']})" if env.get("SLURM_RESTART_COUNT") else ""
    print(f"[{time.strftime('%F %T')}] {f'job {job}{restart}: ' if job else ''}{message}",
          flush=True)


def requeue_marker(env: Mapping[str, str]) -> Path:
    """``$CALO_REQUEUE_MARKER``, else
    ``<CALO_STATE_DIR or .slurm-state>/requeue.<job id or pid>``."""
    if env.get(REQUEUE_MARKER_VARIABLE):
        return Path(env[REQUEUE_MARKER_VARIABLE])
    job = env.get("SLURM_JOB_ID") or f"pid{os.getpid()}"
    return Path(env.get("CALO_STATE_DIR") or ".slurm-state").absolute() / f"requeue.{job}"


def time_limit_args(env: Mapping[str, str]) -> list[str]:
    """``["--time-limit", N]``: the job's remaining time (squeue ``%L``) less ``CALO_TIME_MARGIN``;
    [] if none."""
    if not env.get("SLURM_JOB_ID"):
        return []
    try:
        out = subprocess.run(["squeue", "-h", "-j", env["SLURM_JOB_ID"], "-o", "%L"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    seconds = stage_time_limit(parse_time_left(out.splitlines()[0] if out.strip() else ""),
                               int(env.get("CALO_TIME_MARGIN") or TIME_MARGIN_SECONDS))
    return [] if seconds is None else ["--time-limit", str(seconds)]


def run_step(argv: list[str], env: Mapping[str, str] = os.environ) -> int:
    """Run the job step ``argv``, forward SIGUSR1/SIGTERM to it, and requeue the job if the policy
    says so."""
    marker = requeue_marker(env)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    received: list[str] = []
    pending: list[int] = []  # signals that arrived before the step started
    proc: subprocess.Popen | None = None

    def forward(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        log(f"batch step received {received[-1]}; forwarding it to the job step", env)
        if proc is None:
            pending.append(signum)
        elif proc.returncode is None:
            os.kill(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        log(f"running: {' '.join(argv)}", env)
        proc = subprocess.Popen(argv, env={**env, REQUEUE_MARKER_VARIABLE: str(marker)})
        for signum in pending:
            os.kill(proc.pid, signum)
        code = proc.wait()  # a handled signal interrupts the wait, which then resumes (PEP 475)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log(f"job step exited with code {code}", env)
    if marker.exists():
        log(f"a task stopped resumably: {marker.read_text().strip()}", env)
        marker.unlink(missing_ok=True)
        code = EXIT_REQUEUE
    exit_code = code if code >= 0 else 128 - code
    job = env.get("SLURM_JOB_ID")
    decision = decide(code, terminated="SIGTERM" in received,
                      requeues=int(env.get("SLURM_RESTART_COUNT") or 0),
                      max_requeues=int(env.get("CALO_MAX_REQUEUES") or MAX_REQUEUES),
                      in_job=bool(job))
    if decision.outcome is Outcome.REQUEUE:
        assert job is not None
        if subprocess.run(["scontrol", "requeue", job]).returncode == 0:
            log("stopped early (exit 75, checkpoint written): job requeued; it resumes when it "
                "runs again", env)
            return 0
        log("scontrol requeue failed (job submitted with --no-requeue?); resubmit to resume", env)
    elif decision.outcome is Outcome.STOPPED:
        log(decision.reason, env)
    return exit_code


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--time-limit-args"]:
        print(" ".join(time_limit_args(os.environ)))
        return 0
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0].startswith("-"):
        print("usage: python -m pipeline.launch.job_step [--time-limit-args | -- COMMAND ...]",
              file=sys.stderr)
        return 2
    return run_step(args)


if __name__ == "__main__":
    sys.exit(main())
