"""Progressive-distillation losses (Salimans & Ho 2022) for the layer-energy and voxel networks.

A student with N DDIM steps learns to match two steps of its frozen teacher with 2N steps. Times are
drawn from the student's grid ``t = k / N``, ``k = 1..N``; the noisy input is ``z_t = alpha_t x + sigma_t eps``
for a data batch ``x``; the target is :func:`~pipeline.diffusion.ddim.distillation_target` in v form,
so the loss is the same v-MSE as training (Salimans & Ho's "SNR + 1" weighting of the x error; with
x-prediction the students and the teacher output x, and the loss is the floored version of
:func:`~pipeline.diffusion.schedule.prediction_loss`).
As in training, the voxel networks (student and teacher) are conditioned on the true layer energies.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from pipeline.diffusion.ddim import distillation_target
from pipeline.diffusion.schedule import (
    NETWORKS,
    CosineSchedule,
    Prediction,
    as_v,
    diffuse,
    prediction_loss,
)


def student_times(n: int, student_steps: int, device: torch.device,
                  generator: torch.Generator | None = None) -> Tensor:
    """``n`` times drawn uniformly from the student's grid ``{1/N, 2/N, ..., 1}`` -> (n,) float64."""
    k = torch.randint(1, student_steps + 1, (n,), device=device, generator=generator)
    return k.double() / student_steps


def _distill_one(student: Callable[[Tensor, Tensor], Tensor], teacher: Callable[[Tensor, Tensor], Tensor],
                 x: Tensor, t: Tensor, noise: Tensor, schedule: CosineSchedule, student_steps: int,
                 prediction: Prediction) -> Tensor:
    z, _ = diffuse(schedule, x, t, noise)
    target = distillation_target(as_v(teacher, schedule, prediction), z, t, 2 * student_steps, schedule)
    return prediction_loss(student(z, t.float()), z, target, t, schedule, prediction).mean()


def distillation_losses(student_layer: Callable[..., Tensor], student_voxel: Callable[..., Tensor],
                        teacher_layer: Callable[..., Tensor], teacher_voxel: Callable[..., Tensor],
                        layers: Tensor, voxels: Tensor | None, cond: Tensor, schedule: CosineSchedule,
                        student_steps: int, generator: torch.Generator | None = None,
                        prediction: Prediction = "v", networks: Sequence[str] = NETWORKS) -> dict[str, Tensor]:
    """v-losses of the students of ``networks`` on one preprocessed batch -> ``{"loss", "layer", "voxel"}``
    (batch means; 0 for a network not distilled here)."""
    b, dev = layers.shape[0], layers.device
    train_layers, train_voxels = "layers" in networks, "voxels" in networks
    assert voxels is not None or not train_voxels, "distilling the voxel network needs the voxels"
    t_layer = student_times(b, student_steps, dev, generator) if train_layers else None  # draw order as with both
    t_voxel = student_times(b, student_steps, dev, generator) if train_voxels else None
    layer = voxel = torch.zeros((), device=dev)
    if t_layer is not None:
        n_layer = torch.randn(layers.shape, device=dev, dtype=layers.dtype, generator=generator)
        layer = _distill_one(lambda z, t: student_layer(z, t, cond), lambda z, t: teacher_layer(z, t, cond),
                             layers, t_layer, n_layer, schedule, student_steps, prediction)
    if t_voxel is not None and voxels is not None:
        n_voxel = torch.randn(voxels.shape, device=dev, dtype=voxels.dtype, generator=generator)
        voxel = _distill_one(lambda z, t: student_voxel(z, t, cond, layers),
                             lambda z, t: teacher_voxel(z, t, cond, layers), voxels, t_voxel, n_voxel, schedule,
                             student_steps, prediction)
    return {"loss": layer + voxel, "layer": layer, "voxel": voxel}
