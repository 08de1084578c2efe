"""The exported weights of a finished run: both networks' EMA in one tensor file with JSON metadata.

Keys are ``layer_net.*`` and ``voxel_net.*`` (files written before the rename say ``voxel_unet.*``: every
reader maps them with :func:`current_key`); the metadata holds the format name, the number of EMA
updates and the run's own metadata (step, config, geometry, preset, the preprocessing statistics), so a
generation node needs neither the training store nor the checkpoints. Training writes it at the end of
a run or distillation stage; distillation (the teacher) and generation read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from pipeline.runtime.tensor_files import load_tensors, save_tensors

FORMAT = "calo-ema-weights"
PARTS = ("layer_net", "voxel_net")  # the two networks' prefixes in every weights file
RENAMED = {"voxel_unet.": "voxel_net."}  # older prefixes (in exports, checkpoints, committed test weights)


def current_key(key: str) -> str:
    """A weights file's key under today's names (``voxel_unet.w`` -> ``voxel_net.w``)."""
    for old, new in RENAMED.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def save_ema_weights(path: str | Path, state: Mapping[str, Tensor], updates: int,
                     metadata: Mapping[str, object]) -> Path:
    """Write both networks' state dict (``layer_net.*``, ``voxel_net.*``) with its metadata; returns the file."""
    meta = {"format": FORMAT, "format_version": "1", "ema_updates": str(updates),
            "metadata": json.dumps(dict(metadata), sort_keys=True)}
    return save_tensors(path, state, meta)


def load_ema_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, dict[str, Tensor]], dict]:
    """``({"layer_net": state_dict, "voxel_net": state_dict}, metadata)`` from :func:`save_ema_weights`."""
    tensors, meta = load_tensors(path, device)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an EMA export (format {meta.get('format')!r})")
    parts: dict[str, dict[str, Tensor]] = {name: {} for name in PARTS}
    for key, value in tensors.items():
        net, _, name = current_key(key).partition(".")
        if net not in parts:
            raise ValueError(f"{path}: unexpected key {key!r}")
        parts[net][name] = value
    return parts, json.loads(meta.get("metadata", "{}"))
