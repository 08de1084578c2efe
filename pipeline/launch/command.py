"""Launch the whole chain from a login node: one submitit job per stage, chained with ``afterok``.

    python -m pipeline.launch --config configs/ds3.yaml [--set KEY=VAL]... [--stages LIST] [--executor slurm|local]
    python -m pipeline.launch --config configs/ds3.yaml --dry-run      # print the plan, submit nothing
    python -m pipeline.launch status --config configs/ds3.yaml         # markers and job states per stage

Stages: ``convert -> train -> distill:1 .. distill:K -> generate -> export -> evaluate`` (``--stages``: a comma
list such as ``train,distill`` or ``distill:2-3``; default all). Every stage runs ``python -m <module> --config
<run.dir>/launch/config.yaml`` (the resolved config with the ``--set`` overrides, written by each launch), in
the directory the launch was started from (config paths are relative to it).

- **slurm** (default): each stage is a ``submitit.SlurmExecutor`` job with the ``launch.<stage>`` resources,
  ``--dependency=afterok:<previous job>``, ``--kill-on-invalid-dep=yes`` and ``--requeue``; the launcher
  submits and returns at once. Job ids go to ``<run.dir>/launch/jobs.json``; logs to
  ``<run.dir>/launch/logs/<job id>/``.
- **local**: submitit's ``LocalExecutor`` on this machine. It has no scheduler dependencies, so the launcher
  runs the stages one after the other and waits (Ctrl-C stops it; launch again to resume).

Idempotent: stages whose completion marker exists are skipped, and a stage whose job from an earlier launch
is still pending or running (asked from the scheduler: sacct through submitit, squeue when sacct does not
know the job yet) is kept and becomes the dependency of the next one. After a failure, launch again: only
what is left is submitted (pending jobs that wait on a replaced job are cancelled and resubmitted).
Time-outs and preemption: see :mod:`pipeline.launch.stage_job` (SIGUSR1, checkpoint, requeue, resume from disk).

Exit codes: 0 submitted (slurm) or chain finished (local); 1 a stage failed (local), submission failed or the
scheduler cannot be asked about recorded jobs; 2 config or ``--stages`` error; 130 interrupted (local).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from pipeline.config import (
    Config,
    ConfigError,
    add_config_arguments,
    load_config,
    read_yaml,
    save,
    to_dict,
)
from pipeline.data.run_layout import launch_dir
from pipeline.launch.executors import make_executor, stage_resources
from pipeline.launch.jobs import JobRecord, SchedulerError, job_states
from pipeline.launch.plan import STAGES_HELP, Stage, Step, build_plan, chain, format_plan, select
from pipeline.launch.stage_job import StageJob


def stage_job(cfg: Config, stage: Stage, config_file: Path) -> StageJob:
    """The callable a stage's job runs: its command in the launch's working directory."""
    return StageJob(stage.name, stage.command(config_file, sys.executable), os.getcwd(), cfg.launch.max_requeues)


# ------------------------------------------------------------------ launch
def resolved_config_path(cfg: Config) -> Path:
    return (launch_dir(cfg) / "config.yaml").absolute()


def plan_launch(cfg: Config, stages_spec: Optional[str], record: JobRecord) -> list[Step]:
    """What this launch does with every stage, given the recorded jobs and their scheduler states."""
    stages = chain(cfg)
    selected = select(stages, stages_spec)
    states = job_states(record) if record.data["stages"] else {}

    def jobs(name: str) -> tuple[Optional[str], Optional[str]]:
        entry = record.get(name)
        return (None, None) if entry is None else (entry["job_id"], states.get(entry["job_id"]))

    return build_plan(stages, selected, jobs)


def check_executor(plan: Sequence[Step], record: JobRecord, executor: str) -> None:
    """Kept jobs must be SLURM jobs of a SLURM launch: local jobs cannot be dependencies."""
    for step in plan:
        if step.action != "queued":
            continue
        kind = (record.get(step.stage.name) or {}).get("executor")
        if executor == "local" or kind != "slurm":
            raise ConfigError(f"stage {step.stage.name}: its {kind} job {step.job_id} is still {step.state}; "
                              f"wait for it (or cancel it) before a {executor} launch")


def write_config(cfg: Config, plan: Sequence[Step]) -> Path:
    """Write the resolved config for the jobs; refuse to change it under jobs that are kept."""
    path = resolved_config_path(cfg)
    if path.is_file() and read_yaml(path) != to_dict(cfg):
        kept = [f"{s.stage.name} (job {s.job_id})" for s in plan if s.action == "queued"]
        if kept:
            raise ConfigError(f"{path}: the resolved config differs from the one queued jobs will read: "
                              f"{', '.join(kept)}; launch with the same config and overrides, or cancel them")
    save(cfg, path)
    return path


def submit(cfg: Config, plan: Sequence[Step], executor: str, record: JobRecord, config_file: Path) -> int:
    """Submit every new step; SLURM: return at once; local: run them in order and wait."""
    ids = {s.stage.name: s.job_id for s in plan if s.action == "queued"}
    for step in plan:
        if not step.submits:
            continue
        if step.action == "resubmit" and step.job_id:
            _cancel(cfg, step.job_id)
        after = ids.get(step.after) if step.after else None
        job = make_executor(cfg, step.stage, executor, after).submit(stage_job(cfg, step.stage, config_file))
        ids[step.stage.name] = job.job_id
        record.put(step.stage.name, job_id=job.job_id, executor=executor, after=after, cwd=os.getcwd(),
                   submitted=datetime.datetime.now().isoformat(timespec="seconds"),
                   command=step.stage.command(config_file, sys.executable))
        print(f"launch: {step.stage.name}: job {job.job_id}" + (f" (afterok:{after})" if after else ""))
        if executor == "local":
            try:
                job.result()
            except KeyboardInterrupt:
                job.cancel()
                print(f"launch: interrupted during {step.stage.name}; launch again to resume", file=sys.stderr)
                return 130
            except Exception as err:  # submitit's FailedJobError/UncompletedJobError carry the stage's error
                print(f"launch: {step.stage.name} failed (log: {job.paths.stdout}):\n{err}", file=sys.stderr)
                return 1
    return 0


def _cancel(cfg: Config, job_id: str) -> None:
    import submitit

    submitit.SlurmJob(folder=launch_dir(cfg) / "logs" / "%j", job_id=job_id).cancel(check=False)  # scancel
    print(f"launch: cancelled job {job_id}")


def status(cfg: Config, record: JobRecord) -> str:
    """One line per stage: marker state (done / requeue / -), recorded job id and its scheduler state."""
    note = ""
    try:
        states = job_states(record) if record.data["stages"] else {}
    except SchedulerError as err:
        states, note = {}, f"\n  ({err})"
    lines = [f"run {cfg.run.dir}   jobs: {record.path}", f"  {'stage':<11} {'marker':<8} {'job':<10} state"]
    for stage in chain(cfg):
        entry = record.get(stage.name) or {}
        job_id = entry.get("job_id", "-")
        lines.append(f"  {stage.name:<11} {stage.marker_state():<8} {job_id:<10} {states.get(job_id, '-')}")
    return "\n".join(lines) + note


def describe_launch(cfg: Config, executor: str, config_file: Path, record: JobRecord) -> str:
    """The header of a plan: executor, scheduler settings, where config, jobs and logs go."""
    lines = [f"launch plan for {cfg.run.dir} ({executor}; config {config_file}):"]
    if executor == "slurm":
        where = {k: getattr(cfg.launch, k) for k in ("partition", "account", "qos") if getattr(cfg.launch, k)}
        extra = ", ".join(f"{k} {v}" for k, v in {**where, **cfg.launch.additional_parameters}.items())
        lines.append(f"  sbatch: {extra or 'default partition'}; SIGUSR1 {cfg.launch.signal_seconds} s before the "
                     f"time limit; logs {launch_dir(cfg) / 'logs'}/<job id>/")
    cwds = {e.get("cwd") for e in record.data["stages"].values()} - {None, os.getcwd()}
    if cwds:
        lines.append(f"  warning: earlier jobs ran in {', '.join(sorted(cwds))}; config paths are relative to the "
                     f"directory of the launch ({os.getcwd()})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=("run", "status"), default="run",
                        help="run (default): submit what is left; status: show each stage's state")
    add_config_arguments(parser)
    parser.add_argument("--stages", help=STAGES_HELP)
    parser.add_argument("--executor", choices=("slurm", "local"), help="override launch.executor")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (resources, dependencies, "
                                                               "commands) and submit nothing")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        record = JobRecord(launch_dir(cfg) / "jobs.json")
        if args.action == "status":
            print(status(cfg, record))
            return 0
        executor = args.executor or cfg.launch.executor
        plan = plan_launch(cfg, args.stages, record)
        config_file = resolved_config_path(cfg)
        check_executor(plan, record, executor)
        print(describe_launch(cfg, executor, config_file, record))
        print(format_plan(plan, lambda s: stage_resources(cfg, s, executor),
                          lambda s: s.command(config_file, sys.executable)))
        if args.dry_run:
            return 0
        if not any(s.submits for s in plan):
            print("launch: nothing to submit")
            return 0
        config_file = write_config(cfg, plan)
    except ConfigError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    except SchedulerError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 1
    try:
        return submit(cfg, plan, executor, record, config_file)
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:  # sbatch refused, no srun, ...
        print(f"launch: error: submission failed: {err}", file=sys.stderr)
        return 1
