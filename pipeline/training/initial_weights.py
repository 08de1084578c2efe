"""Where a run's first weights come from besides the random initialisation: a distillation teacher's EMA
export (the student and its EMA start from it), or ``train.init_from`` (weights and EMA of a checkpoint,
with a fresh optimiser and schedule).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.models.ema_weights import load_ema_weights
from pipeline.runtime.tensor_files import find_tensor_file, load_tensors
from pipeline.training.checkpoint import CheckpointError, resolve_init_from
from pipeline.training.engine import safe_load_module_weights
from pipeline.training.losses import DiffusionLoss, DistillationLoss


@dataclass(frozen=True)
class Teacher:
    """A distillation stage's teacher: its EMA export, and the student's DDIM steps (half the teacher's)."""

    ema: Path
    student_steps: int
    stage: int  # the student's stage (the teacher is stage - 1)
    run_dir: Path  # the teacher's run directory
    steps: int  # the teacher's sampling steps
    ema_sha256: str | None = None


def student_of(teacher: Teacher, pair: DiffusionLoss, device: torch.device, model_name: str) -> DistillationLoss:
    """``pair`` loaded with the teacher's EMA weights, as the student of a frozen copy of itself."""
    parts, _ = load_ema_weights(teacher.ema, device)
    try:
        pair.layer_net.load_state_dict(parts["layer_net"])
        pair.voxel_net.load_state_dict(parts["voxel_net"])
    except RuntimeError as err:
        raise CheckpointError(f"{teacher.ema}: the teacher's weights do not fit {model_name}: {err}") from None
    frozen = copy.deepcopy(pair)
    return DistillationLoss(pair.layer_net, pair.voxel_net, pair.schedule, frozen, teacher.student_steps,
                            pair.networks)


def load_init_from(init_from: str, model: DiffusionLoss, device: torch.device) -> dict[str, torch.Tensor] | None:
    """Load the weights of checkpoint ``init_from`` into ``model``; returns its EMA state (None if absent)."""
    tag_dir = resolve_init_from(init_from)
    model.load_state_dict(safe_load_module_weights(str(tag_dir / "mp_rank_00_model_states.pt"), device))
    ema_file = find_tensor_file(tag_dir / "ema")
    return load_tensors(ema_file)[0] if ema_file else None
