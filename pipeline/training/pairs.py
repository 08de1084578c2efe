"""Both networks as one trainable module whose forward pass is the loss, for one engine and one optimiser.

:class:`DiffusionPair` holds the layer-energy network and the voxel network (U-Net or transformer, kept under
the name ``voxel_unet`` so that weights files keep one layout); its forward returns the losses
of :func:`pipeline.diffusion.training_losses`. :class:`DistillationPair` is the same pair as a
progressive-distillation student of a frozen teacher (:func:`pipeline.diffusion.distillation_losses`);
its state dict is the plain pair's.

``networks`` (``train.networks``) names the networks a run trains: the other network is frozen
(``requires_grad`` off, so it has no gradients and no optimiser state), is not called, and its loss is 0. Its
weights still travel in checkpoints and exports, so every weights file has one layout.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pipeline.diffusion import CosineSchedule, Prediction, distillation_losses, training_losses
from pipeline.diffusion.schedule import NETWORKS
from pipeline.models import LayerEnergyNet, VoxelNet


class DiffusionPair(nn.Module):
    """``forward(layers, voxels, cond, generator) -> {"loss", "layer", "voxel"}`` for both networks."""

    def __init__(self, layer_net: LayerEnergyNet, voxel_unet: VoxelNet, schedule: CosineSchedule,
                 prediction: Prediction = "v", networks: Sequence[str] = NETWORKS) -> None:
        super().__init__()
        self.layer_net, self.voxel_unet, self.schedule = layer_net, voxel_unet, schedule
        self.prediction = prediction  # what both networks output (diffusion.prediction)
        self.networks = tuple(networks)  # trained here (train.networks); the others are frozen
        self.layer_net.requires_grad_("layers" in self.networks)
        self.voxel_unet.requires_grad_("voxels" in self.networks)

    def forward(self, layers: Tensor, voxels: Tensor | None, cond: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return training_losses(self.layer_net, self.voxel_unet, layers, voxels, cond, self.schedule, generator,
                               self.prediction, self.networks)


class FrozenTeacher:
    """A frozen model shared, never copied: not a submodule (so it is neither trained, checkpointed nor
    partitioned), and ``copy.deepcopy`` (the EMA's copy of the student) returns the same object."""

    def __init__(self, model: DiffusionPair) -> None:
        self.model = model.eval().requires_grad_(False)

    def __deepcopy__(self, memo: dict) -> "FrozenTeacher":
        return self


class DistillationPair(DiffusionPair):
    """A student pair whose loss is the progressive-distillation loss against ``teacher`` (2N steps)."""

    def __init__(self, layer_net: LayerEnergyNet, voxel_unet: VoxelNet, schedule: CosineSchedule,
                 teacher: DiffusionPair, student_steps: int, networks: Sequence[str] = NETWORKS) -> None:
        super().__init__(layer_net, voxel_unet, schedule, teacher.prediction, networks)
        self.teacher, self.student_steps = FrozenTeacher(teacher), student_steps

    def forward(self, layers: Tensor, voxels: Tensor | None, cond: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        t = self.teacher.model
        return distillation_losses(self.layer_net, self.voxel_unet, t.layer_net, t.voxel_unet, layers, voxels, cond,
                                   self.schedule, self.student_steps, generator, self.prediction, self.networks)
