"""The one stop-and-requeue policy (pipeline/runtime/requeue_policy.py), the job step the slurm/ scripts run
(pipeline/launch/job_step.py), and the scripts' agreement with pipeline.launch's defaults. No cluster needed:
scontrol and squeue are stand-ins on PATH (tests/test_slurm_cluster.py runs the real thing)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config.launch_resources import LaunchConfig
from pipeline.runtime.requeue_policy import (
    MAX_REQUEUES,
    WARNING_SECONDS,
    WARNING_SIGNAL,
    Outcome,
    decide,
    parse_time_left,
    stage_time_limit,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"convert": "convert.sh", "train": "train_ds3.sh", "distill": "distill.sh", "generate": "generate.sh",
           "export": "export.sh", "evaluate": "evaluate.sh"}


@pytest.mark.parametrize("code, terminated, requeues, in_job, outcome", [
    (0, False, 0, True, Outcome.DONE),
    (0, True, 0, True, Outcome.DONE),  # finished before the signal mattered
    (1, False, 0, True, Outcome.FAILED),
    (3, True, 0, True, Outcome.FAILED),
    (75, False, 0, True, Outcome.REQUEUE),
    (-signal.SIGUSR1, False, 3, True, Outcome.REQUEUE),  # killed by the warning before handling it
    (75, True, 0, True, Outcome.STOPPED),  # SIGTERM: stop, never requeue
    (-signal.SIGTERM, True, 0, True, Outcome.STOPPED),
    (75, False, MAX_REQUEUES, True, Outcome.STOPPED),  # out of requeues
    (75, False, 0, False, Outcome.STOPPED),  # not under a scheduler
])
def test_decide(code, terminated, requeues, in_job, outcome):
    assert decide(code, terminated=terminated, requeues=requeues, in_job=in_job).outcome is outcome


@pytest.mark.parametrize("text, seconds", [("1-02:03:04", 93784), ("2:03:04", 7384), ("03:04", 184),
                                           ("0:00", 0), ("UNLIMITED", None), ("NOT_SET", None), ("", None)])
def test_parse_time_left(text, seconds):
    assert parse_time_left(text) == seconds


def test_stage_time_limit_keeps_the_margin_and_a_minute():
    assert stage_time_limit(None) is None
    assert stage_time_limit(3600, margin=180) == 3420
    assert stage_time_limit(100, margin=180) == 60


# ---------------------------------------------------------------- the job step, run as the batch script runs it
CHILD = """
import os, pathlib, signal, sys, time
how, ready = sys.argv[1], pathlib.Path(sys.argv[2])
def stop(signum, frame):
    pathlib.Path(os.environ["CALO_REQUEUE_MARKER"]).write_text(signal.Signals(signum).name)
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
signal.signal(signal.SIGTERM, stop)
if how == "marker":  # a task stopped resumably, but srun reported the killed tasks' code
    pathlib.Path(os.environ["CALO_REQUEUE_MARKER"]).write_text("rank 1 stopped")
    sys.exit(137)
if how == "wait":
    ready.write_text("ready")
    time.sleep(60)
sys.exit(int(how))
"""


@pytest.fixture()
def job_env(tmp_path):
    """A batch job's environment: job id, restart count, state dir, and stand-ins for scontrol and squeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.calls\n')
    (bin_dir / "squeue").write_text("#!/bin/sh\necho 1:02:03\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / "child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CALO_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID="4242", CALO_STATE_DIR=str(tmp_path / "state"),
               PYTHONPATH=str(REPO))
    return env


def job_step(tmp_path: Path, env: dict, how: str, send: "signal.Signals | None" = None) -> tuple[int, str]:
    """``python -m pipeline.launch.job_step -- python child.py HOW``; optionally signal it once the child waits."""
    ready = tmp_path / f"ready.{how}"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.launch.job_step", "--", sys.executable,
                             str(tmp_path / "child.py"), how, str(ready)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if send is not None:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(send)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def requeued(tmp_path: Path) -> bool:
    calls = tmp_path / "scontrol.calls"
    return calls.exists() and "requeue 4242" in calls.read_text()


@pytest.mark.parametrize("how, code", [("0", 0), ("3", 3)])
def test_job_step_passes_done_and_failure_on(tmp_path, job_env, how, code):
    assert job_step(tmp_path, job_env, how)[0] == code
    assert not requeued(tmp_path)


def test_job_step_requeues_on_the_warning_signal_and_consumes_the_marker(tmp_path, job_env):
    code, out = job_step(tmp_path, job_env, "wait", send=signal.SIGUSR1)
    assert code == 0 and requeued(tmp_path), out
    assert "batch step received SIGUSR1" in out and "a task stopped resumably: SIGUSR1" in out
    assert not list((tmp_path / "state").glob("requeue.*"))


def test_job_step_reads_a_stop_from_the_marker_when_srun_reports_a_killed_task(tmp_path, job_env):
    code, out = job_step(tmp_path, job_env, "marker")
    assert code == 0 and requeued(tmp_path), out


def test_job_step_never_requeues_after_sigterm(tmp_path, job_env):
    code, out = job_step(tmp_path, job_env, "wait", send=signal.SIGTERM)
    assert code == 75 and not requeued(tmp_path), out
    assert "stopped by SIGTERM" in out


@pytest.mark.parametrize("extra, message", [({"SLURM_RESTART_COUNT": "2", "CALO_MAX_REQUEUES": "2"}, "already requeued 2 times"),
                                            ({"SLURM_JOB_ID": ""}, "not in a batch job")])
def test_job_step_stops_without_requeue(tmp_path, job_env, extra, message):
    code, out = job_step(tmp_path, {**job_env, **extra}, "75")
    assert code == 75 and not requeued(tmp_path) and message in out, out


def test_time_limit_args_from_the_jobs_time_left(tmp_path, job_env):
    def args(env: dict) -> str:
        return subprocess.run([sys.executable, "-m", "pipeline.launch.job_step", "--time-limit-args"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert args(job_env) == f"--time-limit {3723 - 180}"
    assert args({**job_env, "CALO_TIME_MARGIN": "600"}) == f"--time-limit {3723 - 600}"
    assert args({**job_env, "SLURM_JOB_ID": ""}) == ""


# ---------------------------------------------------------------- the scripts agree with pipeline.launch
def sbatch_header(script: str) -> dict[str, str]:
    options = {}
    for line in (REPO / "slurm" / script).read_text().splitlines():
        match = re.match(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line)
        if match:
            options[match.group(1)] = match.group(2) or ""
    return options


def minutes(slurm_time: str) -> int:
    hours, mins, secs = (int(x) for x in slurm_time.split(":"))
    return hours * 60 + mins + (secs > 0)


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_sbatch_defaults_match_the_launch_defaults(stage):
    res, launch, header = LaunchConfig().resources(stage), LaunchConfig(), sbatch_header(SCRIPTS[stage])
    tasks_per_node = int(header.get("ntasks-per-node") or header["ntasks"])
    got = (int(header["nodes"]), tasks_per_node, int(header.get("gpus-per-node", 0)),
           int(header["cpus-per-task"]), int(header.get("mem", "0G").rstrip("G")), minutes(header["time"]))
    assert got == (res.nodes, res.tasks_per_node, res.gpus_per_node, res.cpus_per_task, res.mem_gb,
                   res.time_minutes), f"slurm/{SCRIPTS[stage]} vs launch.{stage}"
    assert header["signal"] == f"{WARNING_SIGNAL}@{WARNING_SECONDS}" == f"{WARNING_SIGNAL}@{launch.signal_seconds}"
    assert "requeue" in header


def test_every_script_finds_the_repository_the_same_way_and_runs_its_step_under_the_policy():
    locators = set()
    for script in SCRIPTS.values():
        text = (REPO / "slurm" / script).read_text()
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("# sbatch runs a spool copy"))
        locators.add("\n".join(lines[start:start + 5]))
        assert "run_requeueable" in text, script
    assert len(locators) == 1
    env = (REPO / "slurm" / "env.sh").read_text()
    assert "exec \"$PYTHON\" -m pipeline.launch.job_step" in env
    assert not re.search(r"\b(20|180|300)\b", env), "policy numbers live in pipeline/runtime/requeue_policy.py"
