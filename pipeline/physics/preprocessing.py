"""Invertible CaloScore-v2-style preprocessing of showers (pure torch, runs on the batch's device).

A shower ``(L, A, R)`` in MeV with incident energy ``E`` becomes two diffusion targets and a
condition:

- ``layers`` (L,): ``u_l = E_l / E`` (layer energy over incident energy), then
  ``logit(alpha + (1 - 2 alpha) u_l)`` with ``alpha = 1e-6`` (:data:`LOGIT_ALPHA`), standardised
  with the store's ``logit_layer_fraction`` mean/std per layer. Modelled by the layer-energy
  network.
- ``voxels`` (L, A, R): ``f = E_voxel / E_l`` (0 in empty layers), the same logit, standardised with
  ``logit_voxel_fraction`` mean/std per (layer, radius), shared over angle so the transform commutes
  with rotations. Modelled by the U-Net, conditioned on ``layers``.
- ``cond`` (): ``(log E - mean) / std`` with the store's ``log_energy`` statistics.

The inverse undoes each step exactly (sigmoid, ``(y - alpha) / (1 - 2 alpha)``, clamped to
[0, 1]), then **conserves energy**: the clamped voxel fractions of each layer are divided by their
sum (a layer whose fractions are all zero is spread uniformly) and multiplied by the layer energy
``u_l E``, so every layer's voxels sum to the generated layer energy before the threshold. Finally
voxels below the geometry's threshold (15.15 keV for ds2/ds3) are set to zero. All outputs are
non-negative. For data the sum normalisation is the identity up to rounding, so
``inverse(forward(x)) == x`` to float tolerance (without the threshold; with it, equal to the
thresholded data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pipeline.physics.geometry import Geometry
from pipeline.physics.shower_stats import LOGIT_ALPHA

#: floor on stored standard deviations (a (layer, radius) bin that is always empty has std 0)
MIN_STD = 1e-3


@dataclass
class Preprocessed:
    """Diffusion-space view of a batch: ``layers`` (B, L), ``voxels`` (B, L, A, R), ``cond``
    (B,)."""

    layers: Tensor
    # None for :meth:`Preprocessor.from_layer_energies` (a run training the layers alone)
    voxels: Tensor | None
    cond: Tensor


def logit(x: Tensor) -> Tensor:
    """``logit(alpha + (1 - 2 alpha) x)`` of fractions (clamped to [0, 1])."""
    y = LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * x.clamp(0.0, 1.0)
    return torch.log(y) - torch.log1p(-y)


def inverse_logit(z: Tensor) -> Tensor:
    """Inverse of :func:`logit`, clamped to [0, 1]."""
    return ((torch.sigmoid(z) - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)).clamp(0.0, 1.0)


def _stat(stats: Mapping[str, Any], name: str, key: str) -> Tensor:
    return torch.as_tensor(stats[name][key], dtype=torch.float64)


class Preprocessor(nn.Module):
    """Forward and inverse transform for one regular geometry, standardised with a store's
    statistics.

    The statistics are buffers, so ``.to(device)`` moves them and ``state_dict`` saves them with a
    checkpoint; computations run in the dtype of the showers/diffusion tensors passed in.
    """

    def __init__(self, stats: Mapping[str, Any], geometry: Geometry) -> None:
        super().__init__()
        if not geometry.is_regular:
            raise ValueError(f"geometry {geometry.name} is not regular (L, A, R); ds1 is not "
                             f"supported")
        self.shape: tuple[int, int, int] = tuple(geometry.shape)  # type: ignore[assignment]
        self.threshold_mev = float(geometry.threshold_mev)
        L, _, R = self.shape
        layer_mean, layer_std = (_stat(stats, "logit_layer_fraction", "mean"),
                                 _stat(stats, "logit_layer_fraction", "std"))
        vox_mean, vox_std = (_stat(stats, "logit_voxel_fraction", "mean"),
                             _stat(stats, "logit_voxel_fraction", "std"))
        if layer_mean.shape != (L,) or vox_mean.shape != (L, R):
            raise ValueError(f"statistics of shape {tuple(layer_mean.shape)}/"
                             f"{tuple(vox_mean.shape)} do not fit geometry {geometry.name} "
                             f"{self.shape}")
        self.register_buffer("layer_mean", layer_mean.float())
        self.register_buffer("layer_std", layer_std.clamp_min(MIN_STD).float())
        self.register_buffer("voxel_mean", vox_mean.reshape(L, 1, R).float())
        self.register_buffer("voxel_std", vox_std.clamp_min(MIN_STD).reshape(L, 1, R).float())
        self.register_buffer("log_energy_mean", _stat(stats, "log_energy", "mean").reshape(()))
        self.register_buffer("log_energy_std",
                             _stat(stats, "log_energy", "std").clamp_min(MIN_STD).reshape(()))

    @classmethod
    def from_store(cls, store: Any) -> "Preprocessor":
        """Build from a :class:`pipeline.data.shower_store.ShowerStore` (its attrs hold the
        statistics)."""
        return cls(store.stats, store.geometry)

    # ----------------------------------------------------------------- forward
    def condition(self, energies: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Standardised log incident energy ``(B,)`` from energies in MeV (computed in float64)."""
        log_e = torch.log(energies.to(torch.float64))
        return ((log_e - self.log_energy_mean.double()) / self.log_energy_std.double()).to(dtype)

    def forward(self, showers: Tensor, energies: Tensor,
                dequantize: torch.Generator | None = None) -> Preprocessed:
        """``showers`` (B, L, A, R) MeV and ``energies`` (B,) MeV -> :class:`Preprocessed`.

        With a ``dequantize`` generator, each empty voxel of a non-empty layer gets a random
        fraction, uniform below the one the readout threshold stands for (``threshold / E_layer``),
        instead of 0 (``train.dequantize_empty``): the inverse maps any such value back to 0, so the
        network may err anywhere below the threshold.
        """
        if tuple(showers.shape[1:]) != self.shape:
            raise ValueError(f"showers of shape {tuple(showers.shape)} do not match geometry shape "
                             f"{self.shape}")
        dtype = showers.dtype
        e_layer = showers.sum(dim=(2, 3))
        denom = e_layer.reshape(*e_layer.shape, 1, 1)
        frac = torch.where(denom > 0, showers / denom.clamp_min(torch.finfo(dtype).tiny),
                           torch.zeros_like(showers))
        if dequantize is not None:
            below = (self.threshold_mev / denom.clamp_min(torch.finfo(dtype).tiny)).clamp(max=1.0)
            u = torch.rand(showers.shape, generator=dequantize, device=showers.device, dtype=dtype)
            frac = torch.where((showers <= 0) & (denom > 0), u * below, frac)
        voxels = (logit(frac) - self.voxel_mean.to(dtype)) / self.voxel_std.to(dtype)
        return Preprocessed(self._layers(e_layer, energies), voxels,
                            self.condition(energies, dtype))

    def from_layer_energies(self, e_layer: Tensor, energies: Tensor) -> Preprocessed:
        """Layer energies (B, L) in MeV and ``energies`` (B,) -> :class:`Preprocessed` without
        voxels."""
        if e_layer.shape[1:] != (self.shape[0],):
            raise ValueError(f"layer energies of shape {tuple(e_layer.shape)} do not match "
                             f"{self.shape[0]} layers")
        return Preprocessed(self._layers(e_layer, energies), None,
                            self.condition(energies, e_layer.dtype))

    def _layers(self, e_layer: Tensor, energies: Tensor) -> Tensor:
        dtype = e_layer.dtype
        u = e_layer / energies.to(dtype).reshape(-1, 1)
        return (logit(u) - self.layer_mean.to(dtype)) / self.layer_std.to(dtype)

    def bounds(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """The physical range of each bin in diffusion space: ``((lo, hi) of the layers (L,),
        (lo, hi) of the voxels (L, 1, R))``, the standardised logits of the fractions 0 and 1."""
        ends = logit(torch.tensor([0.0, 1.0], dtype=torch.float64,
                                  device=self.layer_mean.device)).float()
        layers = tuple((e - self.layer_mean) / self.layer_std for e in ends)
        voxels = tuple((e - self.voxel_mean) / self.voxel_std for e in ends)
        return layers, voxels  # type: ignore[return-value]

    # ----------------------------------------------------------------- inverse
    def layer_energies(self, layers: Tensor, energies: Tensor) -> Tensor:
        """Layer energies (B, L) in MeV from standardised ``layers``."""
        dtype = layers.dtype
        u = inverse_logit(layers * self.layer_std.to(dtype) + self.layer_mean.to(dtype))
        return u * energies.to(dtype).reshape(-1, 1)

    def voxel_fractions(self, voxels: Tensor, below: Tensor | None = None) -> Tensor:
        """Per-layer voxel fractions (B, L, A, R), non-negative and summing to 1 in every layer;
        fractions under ``below`` (B, L, 1, 1) are set to 0 first (unless that empties the
        layer)."""
        dtype = voxels.dtype
        frac = inverse_logit(voxels * self.voxel_std.to(dtype) + self.voxel_mean.to(dtype))
        if below is not None:
            kept = torch.where(frac >= below, frac, torch.zeros_like(frac))
            frac = torch.where(kept.sum(dim=(2, 3), keepdim=True) > 0, kept, frac)
        total = frac.sum(dim=(2, 3), keepdim=True)
        uniform = torch.full_like(frac, 1.0 / (self.shape[1] * self.shape[2]))
        return torch.where(total > 0, frac / total.clamp_min(torch.finfo(dtype).tiny), uniform)

    def inverse(self, layers: Tensor, voxels: Tensor, energies: Tensor, *, threshold: bool = True,
                threshold_fractions: bool = False) -> Tensor:
        """Showers (B, L, A, R) in MeV; each layer sums to its layer energy before thresholding.

        ``threshold_fractions`` (``sampling.threshold_fractions``): fractions below
        ``threshold / E_layer`` (voxels the threshold would zero anyway) are zeroed before the
        normalisation, so their sum is not taken from the hits.
        """
        e_layer = self.layer_energies(layers, energies)
        scale = e_layer.reshape(*e_layer.shape, 1, 1)
        below = (self.threshold_mev / scale.clamp_min(torch.finfo(scale.dtype).tiny)
                 if threshold_fractions else None)
        showers = self.voxel_fractions(voxels, below) * scale
        return self.apply_threshold(showers) if threshold else showers

    def apply_threshold(self, showers: Tensor) -> Tensor:
        """Zero the voxels below the geometry's readout threshold."""
        return torch.where(showers >= self.threshold_mev, showers, torch.zeros_like(showers))
