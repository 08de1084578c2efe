"""One rank per GPU: each training or generation rank binds to a GPU it claims with an exclusive lock.

:func:`bind_local_gpu` is the one place that chooses a rank's CUDA device (DeepSpeed is handed the same
device). Of the devices the task sees, it takes the first free one starting at ``local_rank % count``, so it
is right however SLURM binds GPUs: all GPUs of the node visible to every task (device = local rank), one GPU
per task (``--gpus-per-task=1``: device 0, whatever the local rank), or a subset per task (``--gpu-bind=closest``,
where two tasks can see the same two GPUs and ``local_rank % 2`` would give both the same one).

A claim is a non-blocking ``flock`` on a node-local file named after the user and the GPU's UUID
(``/tmp/calo-gpu-<uid>-<uuid>.lock``), held until the process exits (a killed rank releases it too). When every
visible GPU is taken (more ranks than GPUs on a node) the rank stops with an error saying what to change.
``CALO_ALLOW_GPU_SHARING=1`` turns the check off (several small jobs on one workstation GPU, on purpose).
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path

from pipeline.runtime.errors import DistributedError

_held: dict[str, int] = {}  # GPU id -> file descriptor holding its lock for the life of the process


def lock_dir() -> Path:
    """``/tmp`` (node-local, shared by the tasks of a job), else the temporary directory."""
    tmp = Path("/tmp")
    return tmp if tmp.is_dir() and os.access(tmp, os.W_OK) else Path(tempfile.gettempdir())


def _try_claim(gpu_id: str) -> str | None:
    """Lock ``gpu_id`` for this process: None if it is ours now, else who holds it."""
    if gpu_id in _held:
        return None
    path = lock_dir() / f"calo-gpu-{os.getuid()}-{gpu_id}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except PermissionError as err:
        raise DistributedError(f"cannot open the GPU lock {path} ({err.strerror}): it belongs to someone else or "
                               f"{path.parent} is not writable; remove it or set TMPDIR to a directory of yours "
                               f"on this node") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        return holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    _held[gpu_id] = fd
    return None


def _in_use(what: str, holders: str) -> DistributedError:
    return DistributedError(
        f"{what} on {socket.gethostname()} is already in use by {holders}: more ranks than GPUs on this node. "
        f"Start one task per GPU (srun --ntasks-per-node=<GPUs per node>, or --gpus-per-task=1); "
        f"CALO_ALLOW_GPU_SHARING=1 allows sharing on purpose")


def claim(gpu_id: str, what: str) -> None:
    """Claim the GPU ``gpu_id`` for this process; raise DistributedError if another process holds it."""
    if os.environ.get("CALO_ALLOW_GPU_SHARING") == "1":
        return
    holder = _try_claim(gpu_id)
    if holder is not None:
        raise _in_use(what, holder)


def _gpu_id(index: int) -> tuple[str, str]:
    """CUDA device ``index``'s UUID (it holds across CUDA_VISIBLE_DEVICES) and its description."""
    import torch

    props = torch.cuda.get_device_properties(index)
    gpu_id = str(getattr(props, "uuid", "") or f"{socket.gethostname()}-{props.name}-{index}").replace("/", "_")
    return gpu_id, f"GPU {index} ({props.name}, {gpu_id})"


def bind_local_gpu(local_rank: int) -> int:
    """Claim a visible CUDA device for this rank (see the module doc), make it current and return its index."""
    import torch

    count = torch.cuda.device_count()
    order = [(local_rank + k) % count for k in range(count)]
    if os.environ.get("CALO_ALLOW_GPU_SHARING") != "1":
        holders = []
        for index in order:
            gpu_id, what = _gpu_id(index)
            holder = _try_claim(gpu_id)
            if holder is None:
                break
            holders.append(f"{what}: {holder}")
        else:
            raise _in_use(f"every GPU this task sees ({count})", "; ".join(holders))
        order = [index]
    torch.cuda.set_device(order[0])
    return order[0]
