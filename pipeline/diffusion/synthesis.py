"""Shower synthesis with the two networks: layer energies first, then voxels conditioned on them,
then the inverse preprocessing; and the layer energies alone (:func:`synthesize_layers`, for the
layer network by itself). Each network comes with how it is sampled (:class:`NetworkSampling`),
since the two may come from different runs with their own steps and prediction targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from pipeline.diffusion.ddim import sample
from pipeline.diffusion.noise import NoiseSource
from pipeline.diffusion.schedule import CosineSchedule, Prediction, as_v, clipped_x
from pipeline.physics.preprocessing import Preprocessor


@dataclass(frozen=True)
class NetworkSampling:
    """One network and how it is sampled: DDIM ``steps``, what it outputs
    (``diffusion.prediction``), and whether every step's clean-sample estimate is clipped to each
    bin's physical range (``sampling.clip_x``)."""

    model: nn.Module
    steps: int
    prediction: Prediction = "v"
    clip: bool = False


@torch.no_grad()
def synthesize(energies: Tensor, seeds: Sequence[int], layer: NetworkSampling | None,
               voxel: NetworkSampling, preprocessor: Preprocessor, *,
               schedule: CosineSchedule = CosineSchedule(), eta: float = 0.0,
               threshold: bool = True, threshold_fractions: bool = False,
               layers: Tensor | None = None) -> Tensor:
    """Showers ``(B, L, A, R)`` in MeV (in the models' dtype, on the voxel model's device) for
    incident ``energies`` (B,) in MeV; shower i depends only on ``(energies[i], seeds[i])``, not
    on the batch.

    ``eta > 0`` makes both samplers stochastic. Models are used as given (call ``.eval()``, wrap in
    ``torch.autocast`` if wanted); the preprocessor must be on the models' device. ``layers``
    (B, L), preprocessed, replaces the layer network's sample (the voxel network alone, conditioned
    on given layer energies; ``layer`` may then be None). ``threshold_fractions``: see
    :meth:`Preprocessor.inverse`.
    """
    if len(seeds) != len(energies):
        raise ValueError(f"{len(seeds)} seeds for {len(energies)} energies")
    param = next(voxel.model.parameters())
    device, dtype = param.device, param.dtype
    energies = energies.to(device)
    noise = NoiseSource(seeds, device, dtype)
    cond = preprocessor.condition(energies, dtype)
    L, A, R = preprocessor.shape
    voxel_v = as_v(voxel.model, schedule, voxel.prediction)
    if voxel.clip:
        voxel_v = clipped_x(voxel_v, schedule, *preprocessor.bounds()[1])
    if layers is None:
        if layer is None:
            raise ValueError("synthesize: no layer network and no given layers")
        layers = _sample_layers(layer, cond, noise, preprocessor, schedule, eta)
    else:
        layers = layers.to(device, dtype)
    voxels = sample(lambda z, t: voxel_v(z, t, cond, layers), noise((L, A, R), 0, "voxels"),
                    schedule, voxel.steps, eta=eta,
                    step_noise=lambda step: noise((L, A, R), step, "voxels"))
    return preprocessor.inverse(layers.to(dtype), voxels.to(dtype), energies, threshold=threshold,
                                threshold_fractions=threshold_fractions)


@torch.no_grad()
def synthesize_layers(energies: Tensor, seeds: Sequence[int], layer: NetworkSampling,
                      preprocessor: Preprocessor, *, schedule: CosineSchedule = CosineSchedule(),
                      eta: float = 0.0, threshold: bool = True) -> Tensor:
    """Layer energies ``(B, L)`` in MeV from the layer network alone, with the same noise as
    :func:`synthesize` (so shower i's layer energies are the ones its voxels would be conditioned
    on). With ``threshold`` a layer below the readout threshold is set to 0: it can hold no voxel
    above the threshold, so the whole chain would read it as empty."""
    if len(seeds) != len(energies):
        raise ValueError(f"{len(seeds)} seeds for {len(energies)} energies")
    param = next(layer.model.parameters())
    energies = energies.to(param.device)
    noise = NoiseSource(seeds, param.device, param.dtype)
    cond = preprocessor.condition(energies, param.dtype)
    layers = _sample_layers(layer, cond, noise, preprocessor, schedule, eta)
    e_layer = preprocessor.layer_energies(layers.to(param.dtype), energies)
    return (torch.where(e_layer >= preprocessor.threshold_mev, e_layer, 0.0) if threshold
            else e_layer)


def _sample_layers(layer: NetworkSampling, cond: Tensor, noise: NoiseSource,
                   preprocessor: Preprocessor, schedule: CosineSchedule, eta: float) -> Tensor:
    """The layer network's DDIM sample (B, L) in diffusion space, from the showers' ``layers``
    noise stream."""
    L = preprocessor.shape[0]
    layer_v = as_v(layer.model, schedule, layer.prediction)
    if layer.clip:
        layer_v = clipped_x(layer_v, schedule, *preprocessor.bounds()[0])
    return sample(lambda z, t: layer_v(z, t, cond), noise((L,), 0, "layers"), schedule, layer.steps,
                  eta=eta, step_noise=lambda step: noise((L,), step, "layers"))
