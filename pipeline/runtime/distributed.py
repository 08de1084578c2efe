"""Rank discovery and DeepSpeed initialisation for every way a training job can be launched.

:func:`discover` reads rank, local rank, world size and the master's address and port from the first
source that applies, in this order:

1. **torchrun** (or the ``deepspeed`` launcher, or submitit's ``TorchDistributedEnvironment.export``):
   all five of ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.
2. **SLURM** ``srun`` step: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``),
   ``SLURM_LOCALID``; master = first host of ``SLURM_STEP_NODELIST`` (or ``SLURM_JOB_NODELIST``), port
   derived from ``SLURM_JOB_ID`` (and the step id). Only inside a job step (some ``SLURM_STEP_*``
   variable set: the batch script itself is one process), and not when an MPI launcher's rank or size
   disagrees with SLURM's (``mpirun`` inside an allocation inherits variables that are not its own).
3. **submitit** (``SUBMITIT_EXECUTOR`` set; under SLURM source 2 already applies): its ``JobEnvironment``.
4. **MPI** (``mpirun``/``srun --mpi=pmi2``) through mpi4py: rank 0's host and a free port are broadcast.
5. Otherwise a **single process** (rank 0 of 1 on 127.0.0.1).

``MASTER_ADDR``/``MASTER_PORT`` set on their own override the master of sources 2-5. ``RANK``,
``WORLD_SIZE`` or ``LOCAL_RANK`` without all five, or a SLURM task without its rank variables, is an
error (:class:`DistributedError`) rather than a guess. :func:`init_distributed` exports all five
variables (so DeepSpeed never falls back to its own MPI discovery) and starts the process group:
gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import zlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Literal, TypeVar

from pipeline.runtime import mpi
from pipeline.runtime.errors import DistributedError
from pipeline.runtime.gpu_claim import bind_local_gpu

RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_MPI_VARIABLES = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                  ("PMIX_RANK", "PMIX_SIZE"))
_MPI_RANK_VARIABLES = tuple(rank for rank, _ in _MPI_VARIABLES)
_SLURM_STEP_VARIABLES = ("SLURM_STEP_ID", "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE")
Source = Literal["torchrun", "slurm", "submitit", "mpi", "single"]


T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    source: Source
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------ helpers
def parse_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list such as ``node[01-03,07],gpu-[1-2]-ib,login1`` (zero padding kept)."""
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        hosts.extend(_expand(item))
    if not hosts:
        raise DistributedError(f"empty SLURM node list {nodelist!r}")
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise DistributedError(f"unbalanced ']' in SLURM node list {text!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise DistributedError(f"unbalanced '[' in SLURM node list {text!r}")
    items.append(text[start:])
    return [s for s in (i.strip() for i in items) if s]


def _expand(item: str) -> list[str]:
    match = re.search(r"\[([^\[\]]*)\]", item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end():]
    out = []
    for part in match.group(1).split(","):
        bounds = part.strip().split("-")
        if len(bounds) == 1 and bounds[0].isdigit():
            values = [bounds[0]]
        elif len(bounds) == 2 and all(b.isdigit() for b in bounds) and int(bounds[0]) <= int(bounds[1]):
            width = len(bounds[0])
            values = [str(v).zfill(width) for v in range(int(bounds[0]), int(bounds[1]) + 1)]
        else:
            raise DistributedError(f"cannot parse range {part!r} in SLURM node list item {item!r}")
        out.extend(f"{head}{v}{rest}" for v in values for rest in _expand(tail))
    return out


def slurm_hostnames(nodelist: str) -> list[str]:
    """Hosts of a SLURM node list: parsed here, or by ``scontrol show hostnames`` if parsing fails."""
    try:
        return parse_nodelist(nodelist)
    except DistributedError:
        if shutil.which("scontrol") is None:
            raise
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        if not out:
            raise
        return out


def tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Tasks on node ``node`` from SLURM's ``2(x3),1`` notation."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            raise DistributedError(f"cannot parse SLURM tasks per node {tasks_per_node!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts[node] if 0 <= node < len(counts) else counts[-1]


EPHEMERAL_PORTS_START = 32768  # Linux's default ip_local_port_range starts here (source ports of outgoing connections)


def port_from_job_id(job_id: str) -> int:
    """A port in [20000, 32768) that every task of the job derives alike from its id: below the ephemeral range,
    so no outgoing connection on the node (a previous job's gloo pairs, slurmd, a database client) can hold it."""
    return 20000 + zlib.crc32(job_id.encode()) % (EPHEMERAL_PORTS_START - 20000)


def free_port() -> int:
    """A TCP port that is free on this host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer") from None


def _check(rank: int, local_rank: int, world: int, source: str) -> None:
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < world:
        raise DistributedError(f"{source}: impossible rank {rank} / local rank {local_rank} of world size {world}")


def _master_override(addr: str, port: int) -> tuple[str, int]:
    return os.environ.get("MASTER_ADDR", addr), int(os.environ.get("MASTER_PORT", port))


# ------------------------------------------------------------------ sources
def _from_torchrun() -> DistEnv | None:
    present = [k for k in _RANK_VARIABLES if k in os.environ]
    if not present:
        return None
    missing = [k for k in RENDEZVOUS if k not in os.environ]
    if missing:
        raise DistributedError(
            f"incomplete torch.distributed environment: {', '.join(present)} set but {', '.join(missing)} missing; "
            f"set all of {', '.join(RENDEZVOUS)} (as torchrun does) or none of them"
        )
    rank, world, local = (_int(k) for k in _RANK_VARIABLES)
    _check(rank, local, world, "torchrun")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return DistEnv(rank, local, world, os.environ["MASTER_ADDR"], _int("MASTER_PORT"), "torchrun",
                   local_world)


def _from_slurm() -> DistEnv | None:
    e = os.environ
    if "SLURM_PROCID" not in e or not any(k in e for k in _SLURM_STEP_VARIABLES):
        return None  # not an srun task (e.g. the batch script itself)
    ntasks_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in e else "SLURM_NTASKS"
    ntasks = e.get(ntasks_var)
    for rank_var, size_var in _MPI_VARIABLES:  # mpirun inside an allocation: these SLURM variables are not ours
        if rank_var in e and (e[rank_var] != e["SLURM_PROCID"] or e.get(size_var, ntasks) != ntasks):
            return None
    missing = [k for k in (ntasks_var, "SLURM_LOCALID") if k not in e]
    if missing:
        raise DistributedError(f"incomplete SLURM task environment: SLURM_PROCID set but {', '.join(missing)} missing")
    rank, world, local = _int("SLURM_PROCID"), _int(ntasks_var), _int("SLURM_LOCALID")
    _check(rank, local, world, "SLURM")
    nodelist = e.get("SLURM_STEP_NODELIST") or e.get("SLURM_JOB_NODELIST") or e.get("SLURM_NODELIST")
    if world > 1 and not nodelist:
        raise DistributedError("SLURM task of a multi-task step without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST")
    if world > 1 and "SLURM_JOB_ID" not in e and "MASTER_PORT" not in e:
        raise DistributedError("SLURM task of a multi-task step without SLURM_JOB_ID (needed for the master port)")
    addr = slurm_hostnames(nodelist)[0] if world > 1 and nodelist else "127.0.0.1"
    port = port_from_job_id(e.get("SLURM_JOB_ID", "0") + "." + e.get("SLURM_STEP_ID", "0"))
    per_node = e.get("SLURM_STEP_TASKS_PER_NODE") or e.get("SLURM_TASKS_PER_NODE")
    local_world = tasks_on_node(per_node, int(e.get("SLURM_NODEID", "0"))) if per_node else world
    return DistEnv(rank, local, world, *_master_override(addr, port), "slurm", local_world)


def _from_submitit() -> DistEnv | None:
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    import submitit

    job = submitit.JobEnvironment()
    rank, local, world = job.global_rank, job.local_rank, job.num_tasks
    _check(rank, local, world, "submitit")
    local_exec = os.environ["SUBMITIT_EXECUTOR"] == "local" or job.num_nodes == 1
    addr = "127.0.0.1" if local_exec else job.hostnames[0]
    return DistEnv(rank, local, world, *_master_override(addr, port_from_job_id(str(job.job_id))), "submitit",
                   world // max(1, job.num_nodes))


def _shared_memory_split() -> int:
    from mpi4py import MPI

    return MPI.COMM_TYPE_SHARED


def _from_mpi() -> DistEnv | None:
    if mpi.launched_ranks() == 1 and not any(k in os.environ for k in _MPI_RANK_VARIABLES):
        return None
    comm = mpi.world_comm()
    if comm is None:
        return None
    import numpy as np

    rank, world = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(_shared_memory_split(), key=rank)
    local, local_world = node.Get_rank(), node.Get_size()
    node.Free()
    buf = np.zeros(256, dtype=np.uint8)  # rank 0's host and a free port, without pickling
    if rank == 0:
        host = "127.0.0.1" if local_world == world else socket.gethostname()
        payload = f"{host} {free_port()}".encode()[:255]
        buf[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    comm.Bcast(buf, root=0)
    host, port = bytes(buf).rstrip(b"\0").decode().split()
    return DistEnv(rank, local, world, *_master_override(host, int(port)), "mpi", local_world)


def discover() -> DistEnv:
    """This process's place in the job, from the first launcher environment that applies (see module doc)."""
    for source in (_from_torchrun, _from_slurm, _from_submitit, _from_mpi):
        env = source()
        if env is not None:
            return env
    return DistEnv(0, 0, 1, *_master_override("127.0.0.1", free_port()), "single", 1)


def export(env: DistEnv) -> None:
    """Set the five rendezvous variables (and LOCAL_WORLD_SIZE) in ``os.environ``."""
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port),
                      LOCAL_WORLD_SIZE=str(env.local_world_size))


def default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(env: DistEnv | None = None, backend: str | None = None,
                     timeout: timedelta = timedelta(minutes=30)) -> DistEnv:
    """Discover (unless given), export, bind this rank's GPU (:func:`bind_local_gpu`) and start the process group,
    then hand it to DeepSpeed. The group is started here, not by DeepSpeed, because DeepSpeed would bind it to
    device ``LOCAL_RANK``, which does not exist when a task sees only its own GPUs (``--gpus-per-task=1``)."""
    import torch
    import torch.distributed as dist

    env = env or discover()
    export(env)
    if torch.cuda.is_available():
        bind_local_gpu(env.local_rank)
    backend = backend or default_backend()
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                                timeout=timeout)
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, distributed_port=env.master_port,
                               verbose=False, timeout=timeout, rank=env.rank, world_size=env.world_size)
    return env


def decided_on_main(decide: Callable[[], T]) -> T:
    """``decide()`` evaluated on rank 0 only, its result (or exception) given to every rank.

    Any decision that leads into a collective (is there a checkpoint to resume, is this step already
    saved) must come out the same on every rank. Each rank reading the shared filesystem itself can give
    different answers (attribute caching on NFS/Lustre), and then one rank waits in a barrier while another
    waits in an all-gather until the collective timeout. Without a process group it is just ``decide()``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decide()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, decide())]
        except Exception as err:  # every rank raises it below
            box = [(False, err)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def gathered(value: T) -> list[T]:
    """Every rank's ``value`` (in rank order) on every rank; ``[value]`` without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Destroy the process group, if any."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
