"""The loss as one trainable module holding both networks, for one engine and one optimiser.

:class:`DiffusionLoss` holds the layer-energy network (``layer_net``) and the voxel network
(``voxel_net``, U-Net or transformer); its forward returns the losses of
:func:`pipeline.diffusion.training_losses`. :class:`DistillationLoss` is the same pair as a
progressive-distillation student of a frozen teacher
(:func:`pipeline.diffusion.distillation_losses`); its state dict is the plain one's. Weights saved
under older names (``voxel_unet.*``) load through :func:`pipeline.models.ema_weights.current_key`.

``networks`` (``train.networks``) names the networks a run trains: the other network is frozen
(``requires_grad`` off, so it has no gradients and no optimiser state), is not called, and its loss
is 0. Its weights still travel in checkpoints and exports, so every weights file has one layout.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from pipeline.config.schema import VoxelTrainingConfig
from pipeline.diffusion import CosineSchedule, Prediction, distillation_losses, training_losses
from pipeline.diffusion.schedule import NETWORKS
from pipeline.diffusion.training_objective import DEFAULT_VOXEL_TRAINING
from pipeline.models import LayerEnergyNet, VoxelNet
from pipeline.models.ema_weights import current_key


def _rename_old_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                     *args: Any) -> None:
    """load_state_dict pre-hook: keys of older weights files under today's names (checkpoints, EMA
    states)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + current_key(key[len(prefix):])
        if new != key:
            state_dict[new] = state_dict.pop(key)


class DiffusionLoss(nn.Module):
    """``forward(layers, voxels, cond, generator) -> {"loss", "layer", "voxel"}`` for both
    networks."""

    def __init__(self, layer_net: LayerEnergyNet, voxel_net: VoxelNet, schedule: CosineSchedule,
                 prediction: Prediction = "v", networks: Sequence[str] = NETWORKS,
                 voxel_training: VoxelTrainingConfig = DEFAULT_VOXEL_TRAINING) -> None:
        super().__init__()
        self.layer_net, self.voxel_net, self.schedule = layer_net, voxel_net, schedule
        self.prediction = prediction  # what both networks output (diffusion.prediction)
        self.voxel_training = voxel_training  # the voxel network's noise levels and loss weights
        self.networks = tuple(networks)  # trained here (train.networks); the others are frozen
        self.layer_net.requires_grad_("layers" in self.networks)
        self.voxel_net.requires_grad_("voxels" in self.networks)
        self.register_load_state_dict_pre_hook(_rename_old_keys)

    def forward(self, layers: Tensor, voxels: Tensor | None, cond: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return training_losses(self.layer_net, self.voxel_net, layers, voxels, cond, self.schedule,
                               generator, self.prediction, self.networks, self.voxel_training)


class FrozenTeacher:
    """A frozen model shared, never copied: not a submodule (so it is neither trained,
    checkpointed nor partitioned), and ``copy.deepcopy`` (the EMA's copy of the student) returns
    the same object."""

    def __init__(self, model: DiffusionLoss) -> None:
        self.model = model.eval().requires_grad_(False)

    def __deepcopy__(self, memo: dict) -> "FrozenTeacher":
        return self


class DistillationLoss(DiffusionLoss):
    """A student pair whose loss is the progressive-distillation loss against ``teacher`` (2N
    steps)."""

    def __init__(self, layer_net: LayerEnergyNet, voxel_net: VoxelNet, schedule: CosineSchedule,
                 teacher: DiffusionLoss, student_steps: int,
                 networks: Sequence[str] = NETWORKS) -> None:
        super().__init__(layer_net, voxel_net, schedule, teacher.prediction, networks)
        self.teacher, self.student_steps = FrozenTeacher(teacher), student_steps

    def forward(self, layers: Tensor, voxels: Tensor | None, cond: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        t = self.teacher.model
        return distillation_losses(self.layer_net, self.voxel_net, t.layer_net, t.voxel_net, layers,
                                   voxels, cond, self.schedule, self.student_steps, generator,
                                   self.prediction, self.networks)
