"""Exponential moving average of the weights (fp32) and tensor files that load without unpickling.

The EMA is a frozen fp32 copy of the trained module, updated once per optimiser step with
``ema <- ema + (1 - d) (w - ema)``, ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the
usual warm-up, so early averages are not dominated by the random initialisation). Buffers are copied.

Tensor files (:func:`save_tensors` / :func:`load_tensors`) are safetensors when the package is
installed, else a torch file holding only tensors and strings, loaded with ``weights_only=True``.
:func:`export_ema` writes the EMA weights on their own for distillation and generation;
:func:`load_ema_weights` reads them back as one state dict per network.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

try:
    import safetensors.torch as _safetensors
except ImportError:  # optional dependency
    _safetensors = None

def tensor_suffix() -> str:
    """``.safetensors`` if safetensors is installed, else ``.pt``."""
    return ".safetensors" if _safetensors is not None else ".pt"


def fsync_path(path: str | Path) -> None:
    """Flush a file or directory to disk (best effort on filesystems without directory fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (timestamps in DONE.json, markers, manifests)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def atomic_write_json(path: str | Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
        raise ValueError(f"{path}: not a tensor file written by pipeline.ema.save_tensors")
    return dict(data["tensors"]), dict(data.get("metadata", {}))


def find_tensor_file(stem: str | Path) -> Path | None:
    """``stem`` with whichever tensor suffix exists (safetensors first), or None."""
    stem = Path(stem)
    for suffix in (".safetensors", ".pt"):
        candidate = stem.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


class EMA:
    """fp32 exponential moving average of a module's parameters (see module doc)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One update from the trained ``model`` (same architecture as the copy)."""
        weight = 1.0 - self.current_decay()
        for ema_p, p in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach().to(ema_p.dtype), weight)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Tensor], updates: int) -> None:
        self.module.load_state_dict(state, strict=True)
        self.updates = int(updates)


def export_ema(ema: EMA, path: str | Path, metadata: Mapping[str, object]) -> Path:
    """Write the EMA weights on their own (keys ``layer_net.*``, ``voxel_unet.*``) with JSON metadata."""
    meta = {"format": "calo-ema-weights", "format_version": "1", "ema_updates": str(ema.updates),
            "metadata": json.dumps(dict(metadata), sort_keys=True)}
    return save_tensors(path, ema.state_dict(), meta)


def load_ema_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, dict[str, Tensor]], dict]:
    """``({"layer_net": state_dict, "voxel_unet": state_dict}, metadata)`` from :func:`export_ema`'s file."""
    tensors, meta = load_tensors(path, device)
    if meta.get("format") != "calo-ema-weights":
        raise ValueError(f"{path}: not an EMA export (format {meta.get('format')!r})")
    parts: dict[str, dict[str, Tensor]] = {"layer_net": {}, "voxel_unet": {}}
    for key, value in tensors.items():
        net, _, name = key.partition(".")
        if net not in parts:
            raise ValueError(f"{path}: unexpected key {key!r}")
        parts[net][name] = value
    return parts, json.loads(meta.get("metadata", "{}"))
