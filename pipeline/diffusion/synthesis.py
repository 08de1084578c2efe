"""Shower synthesis with the two networks: layer energies first, then voxels conditioned on them, then the
inverse preprocessing."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pipeline.diffusion.noise import NoiseSource
from pipeline.diffusion.sampler import sample
from pipeline.diffusion.schedule import CosineSchedule, Prediction, as_v
from pipeline.physics.preprocessing import Preprocessor


@torch.no_grad()
def synthesize(energies: Tensor, seeds: Sequence[int], layer_model: nn.Module, voxel_model: nn.Module,
             preprocessor: Preprocessor, steps: int, *, schedule: CosineSchedule = CosineSchedule(),
             eta: float = 0.0, layer_steps: int | None = None, threshold: bool = True,
             prediction: Prediction = "v") -> Tensor:
    """Showers ``(B, L, A, R)`` in MeV (in the models' dtype, on the voxel model's device) for incident ``energies``
    (B,) in MeV; shower i depends only on ``(energies[i], seeds[i])``, not on the batch.

    ``steps`` DDIM steps for the voxels and ``layer_steps`` (default ``steps``) for the layer
    energies; ``eta > 0`` makes both samplers stochastic. Models are used as given (call ``.eval()``,
    wrap in ``torch.autocast`` if wanted); the preprocessor must be on the models' device. ``prediction``: what
    the networks output (``diffusion.prediction``).
    """
    if len(seeds) != len(energies):
        raise ValueError(f"{len(seeds)} seeds for {len(energies)} energies")
    param = next(voxel_model.parameters())
    device, dtype = param.device, param.dtype
    energies = energies.to(device)
    noise = NoiseSource(seeds, device, dtype)
    cond = preprocessor.condition(energies, dtype)
    L, A, R = preprocessor.shape

    def stepper(shape: tuple[int, ...], stream: str):  # noqa: ANN202 - StepNoise
        return lambda step: noise(shape, step, stream)

    layer_v, voxel_v = as_v(layer_model, schedule, prediction), as_v(voxel_model, schedule, prediction)
    layers = sample(lambda z, t: layer_v(z, t, cond), noise((L,), 0, "layers"), schedule,
                    layer_steps or steps, eta=eta, step_noise=stepper((L,), "layers"))
    voxels = sample(lambda z, t: voxel_v(z, t, cond, layers), noise((L, A, R), 0, "voxels"), schedule,
                    steps, eta=eta, step_noise=stepper((L, A, R), "voxels"))
    return preprocessor.inverse(layers.to(dtype), voxels.to(dtype), energies, threshold=threshold)
