"""The ``launch`` section of the config: where and with what resources each stage's job runs.

Used by ``pipeline.launch`` (submitit); the ``#SBATCH`` defaults of the ``slurm/`` scripts are the
same (tests/test_slurm_scripts.py compares them). GPU stages run one task per GPU; every task of a
train, distill or generate job is a rank; convert's tasks are MPI ranks (``srun --mpi=<mpi>``);
export and evaluate run as one task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pipeline.config.loader import ConfigError, check_at_least
from pipeline.runtime.requeue_policy import MAX_REQUEUES, WARNING_SECONDS

STAGES = ("convert", "train", "distill", "generate", "export", "evaluate")
SINGLE_TASK_STAGES = ("export", "evaluate")


@dataclass
class StageResources:
    """One stage's job: nodes, tasks (one per GPU on GPU stages), CPUs, memory and wall time."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    mem_gb: int = 0  # 0: the partition's default
    time_minutes: int = 60

    def check(self, path: str) -> None:
        check_at_least(self, path, 1, ("nodes", "tasks_per_node", "cpus_per_task", "time_minutes"))
        check_at_least(self, path, 0, ("gpus_per_node", "mem_gb"))

    @property
    def tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    def describe(self) -> str:
        """``2 nodes x 4 tasks, 4 GPUs/node, 8 CPUs/task, 64 GB, 720 min``."""
        mem = f", {self.mem_gb} GB" if self.mem_gb else ""
        return (f"{self.nodes} node{'s' if self.nodes > 1 else ''} x {self.tasks_per_node} "
                f"task{'s' if self.tasks_per_node > 1 else ''}, {self.gpus_per_node} GPUs/node, "
                f"{self.cpus_per_task} CPUs/task{mem}, {self.time_minutes} min")


def _gpu(nodes: int, minutes: int) -> StageResources:
    return StageResources(nodes=nodes, tasks_per_node=4, gpus_per_node=4, cpus_per_task=8,
                          time_minutes=minutes)


@dataclass
class LaunchConfig:
    """Scheduler settings of ``pipeline.launch``: executor, partition/account, per-stage
    resources."""

    # local: submitit's LocalExecutor on this machine, in order
    executor: Literal["slurm", "local"] = "slurm"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    # shell lines run before each job (module load, venv)
    setup: list[str] = field(default_factory=list)
    # SIGUSR1 this long before the time limit: checkpoint and requeue
    signal_seconds: int = WARNING_SECONDS
    max_requeues: int = MAX_REQUEUES  # per stage, for time-outs
    mpi: str = "pmi2"  # srun --mpi=<this> for a convert job with more than one task
    # more #SBATCH options, e.g. {constraint: a100}
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    convert: StageResources = field(
        default_factory=lambda: StageResources(tasks_per_node=16, cpus_per_task=2))
    train: StageResources = field(default_factory=lambda: _gpu(4, 24 * 60))
    distill: StageResources = field(default_factory=lambda: _gpu(2, 12 * 60))
    generate: StageResources = field(default_factory=lambda: _gpu(4, 4 * 60))
    export: StageResources = field(
        default_factory=lambda: StageResources(cpus_per_task=4, time_minutes=120))
    evaluate: StageResources = field(
        default_factory=lambda: StageResources(gpus_per_node=1, cpus_per_task=8, mem_gb=64,
                                               time_minutes=120))

    def check(self, path: str) -> None:
        if self.signal_seconds < 0:
            raise ConfigError(f"{path}.signal_seconds: must be >= 0, got {self.signal_seconds}")
        if self.max_requeues < 0:
            raise ConfigError(f"{path}.max_requeues: must be >= 0, got {self.max_requeues}")
        for stage in STAGES:
            res = self.resources(stage)
            if self.signal_seconds >= res.time_minutes * 60:
                raise ConfigError(f"{path}.signal_seconds: {self.signal_seconds} s must be below "
                                  f"{path}.{stage}.time_minutes ({res.time_minutes} min)")
        for stage in SINGLE_TASK_STAGES:
            if self.resources(stage).tasks != 1:
                raise ConfigError(f"{path}.{stage}: runs as one task; set nodes: 1 and "
                                  f"tasks_per_node: 1")
        reserved = ({"dependency", "signal", "requeue", "output", "error", "job-name"}
                    & set(self.additional_parameters))
        if reserved:
            raise ConfigError(f"{path}.additional_parameters: {sorted(reserved)[0]} is set by "
                              f"pipeline.launch")

    def resources(self, stage: str) -> StageResources:
        if stage not in STAGES:
            raise KeyError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return getattr(self, stage)
