"""submitit executors of the stage jobs: resources, ``afterok`` dependency, USR1 before the time limit."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

from pipeline.config import Config, StageResources
from pipeline.data.run_layout import launch_dir
from pipeline.launch.plan import Stage
from pipeline.runtime.requeue_policy import (
    WARNING_SIGNAL as SIGNAL,  # submitit's timeout signal in our jobs
)


def stage_resources(cfg: Config, stage: Stage, executor: str) -> StageResources:
    """``launch.<kind>``; the local executor runs on this one machine, and convert there as one task (its
    tasks would not form an MPI job)."""
    res = cfg.launch.resources(stage.kind)
    if executor == "local":
        res = dataclasses.replace(res, nodes=1, tasks_per_node=1 if stage.kind == "convert" else res.tasks_per_node)
    return res


def executor_parameters(cfg: Config, stage: Stage, executor: str, after: Optional[str]) -> dict[str, Any]:
    """``update_parameters`` of submitit's SlurmExecutor or LocalExecutor for this stage."""
    launch = cfg.launch
    res = stage_resources(cfg, stage, executor)
    name = f"calo-{Path(cfg.run.dir).name}-{stage.name.replace(':', '')}"
    if executor == "local":
        return {"timeout_min": res.time_minutes, "tasks_per_node": res.tasks_per_node,
                "gpus_per_node": res.gpus_per_node, "signal_delay_s": launch.signal_seconds, "stderr_to_stdout": True}
    extra = {**launch.additional_parameters, "requeue": True, "kill-on-invalid-dep": "yes",
             "signal": f"{SIGNAL}@{launch.signal_seconds}"}
    if after is not None:
        extra["dependency"] = f"afterok:{after}"
    params: dict[str, Any] = {
        "job_name": name, "time": res.time_minutes, "nodes": res.nodes, "ntasks_per_node": res.tasks_per_node,
        "cpus_per_task": res.cpus_per_task, "signal_delay_s": launch.signal_seconds, "stderr_to_stdout": True,
        # each task's threads are the CPUs Slurm gave it, as in slurm/env.sh (without this, torch takes every
        # core of the node where no cgroup or affinity limits it); launch.setup may override it
        "setup": [f"export OMP_NUM_THREADS={res.cpus_per_task}", *launch.setup,
                  f"export SUBMITIT_PREEMPT_SIGNAL={SIGNAL}"],
        "additional_parameters": extra,
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb:
        params["mem"] = f"{res.mem_gb}GB"
    for key in ("partition", "account", "qos"):
        if getattr(launch, key):
            params[key] = getattr(launch, key)
    # a task that exits non-zero ends the step at once instead of leaving the others in a collective
    params["srun_args"] = ["--kill-on-bad-exit=1"]
    if stage.kind == "convert" and res.tasks > 1:
        params["srun_args"].append(f"--mpi={launch.mpi}")
    return params


def make_executor(cfg: Config, stage: Stage, executor: str, after: Optional[str]) -> Any:
    """A submitit executor for one stage's job (logs in ``<run.dir>/launch/logs/%j``)."""
    os.environ["SUBMITIT_PREEMPT_SIGNAL"] = SIGNAL  # read by submitit in the jobs (and local controllers)
    import submitit

    folder = (launch_dir(cfg) / "logs" / "%j").absolute()
    cls = submitit.SlurmExecutor if executor == "slurm" else submitit.LocalExecutor
    ex = cls(folder=folder, max_num_timeout=cfg.launch.max_requeues)
    ex.update_parameters(**executor_parameters(cfg, stage, executor, after))
    return ex
