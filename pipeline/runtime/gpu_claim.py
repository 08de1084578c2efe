"""One rank per GPU: each training or generation rank claims its GPU with an exclusive lock.

With more tasks on a node than GPUs, ranks would silently share a GPU (``local_rank % device_count``), both
sizing their batches to most of its memory. A rank therefore takes a non-blocking ``flock`` on a node-local
file named after the GPU's UUID (``/tmp/calo-gpu-<uuid>.lock``), held until the process exits (a killed rank
releases it too); a second rank on the same GPU gets an error saying what to change.
``CALO_ALLOW_GPU_SHARING=1`` turns the check off (several small jobs on one workstation GPU, on purpose).
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path

from pipeline.runtime.distributed import DistributedError

_held: dict[str, int] = {}  # GPU id -> file descriptor holding its lock for the life of the process


def lock_dir() -> Path:
    """``/tmp`` (node-local, shared by the tasks of a job), else the temporary directory."""
    tmp = Path("/tmp")
    return tmp if tmp.is_dir() and os.access(tmp, os.W_OK) else Path(tempfile.gettempdir())


def claim(gpu_id: str, what: str) -> None:
    """Claim the GPU ``gpu_id`` for this process; raise DistributedError if another process holds it."""
    if os.environ.get("CALO_ALLOW_GPU_SHARING") == "1" or gpu_id in _held:
        return
    path = lock_dir() / f"calo-gpu-{gpu_id}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise DistributedError(
            f"{what} on {socket.gethostname()} is already in use by {holder}: more ranks than GPUs on this node. "
            f"Start one task per GPU (srun --ntasks-per-node=<GPUs per node>, or --gpus-per-task=1); "
            f"CALO_ALLOW_GPU_SHARING=1 allows sharing on purpose") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    _held[gpu_id] = fd


def claim_cuda_device(index: int) -> None:
    """Claim CUDA device ``index`` of this process (by UUID, so it holds across CUDA_VISIBLE_DEVICES)."""
    import torch

    props = torch.cuda.get_device_properties(index)
    gpu_id = str(getattr(props, "uuid", "") or f"{socket.gethostname()}-{props.name}-{index}").replace("/", "_")
    claim(gpu_id, f"GPU {index} ({props.name}, {gpu_id})")
