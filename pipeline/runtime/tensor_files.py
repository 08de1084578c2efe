"""Named-tensor files that load without unpickling: safetensors, or a weights-only torch file.

:func:`save_tensors` writes safetensors when the package is installed, else a torch file holding only
tensors and strings (loaded with ``weights_only=True``); both are written atomically. Checkpoints (RNG
states, EMA) and the exported EMA weights use them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from pipeline.runtime.files import fsync_path

try:
    import safetensors.torch as _safetensors
except ImportError:  # optional dependency
    _safetensors = None


def tensor_suffix() -> str:
    """``.safetensors`` if safetensors is installed, else ``.pt``."""
    return ".safetensors" if _safetensors is not None else ".pt"


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write named tensors (contiguous CPU copies) atomically; the suffix is replaced by :func:`tensor_suffix`."""
    path = Path(path).with_suffix(tensor_suffix())
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if _safetensors is not None:
        _safetensors.save_file(cpu, str(tmp), metadata=meta)
    else:
        torch.save({"tensors": cpu, "metadata": meta}, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Named tensors and string metadata from :func:`save_tensors`; never unpickles objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if _safetensors is None:
            raise RuntimeError(f"{path}: reading safetensors files needs the safetensors package")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    data = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), dict):
        raise ValueError(f"{path}: not a tensor file written by pipeline.runtime.tensor_files.save_tensors")
    return dict(data["tensors"]), dict(data.get("metadata", {}))


def find_tensor_file(stem: str | Path) -> Path | None:
    """``stem`` with whichever tensor suffix exists (safetensors first), or None."""
    stem = Path(stem)
    for suffix in (".safetensors", ".pt"):
        candidate = stem.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (in key order)."""
    h = hashlib.sha256()
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
