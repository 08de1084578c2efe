"""Networks of the two-stage shower diffusion: :class:`LayerEnergyNet` (layer energies) and a voxel
network (voxels given layer energies): :class:`VoxelUNet` or :class:`VoxelTransformer`
(``model.backbone``), sized by the presets in :mod:`.presets`, and the file their exported EMA
weights travel in (:mod:`.ema_weights`).

Owns: architectures and their weights file. May import: :mod:`pipeline.runtime`,
:mod:`pipeline.config`, :mod:`pipeline.physics` (never :mod:`pipeline.diffusion`: the networks do
not know how they are trained).
"""

from __future__ import annotations

from torch import nn

from pipeline.config import ModelConfig
from pipeline.models.layer_net import LayerEnergyNet
from pipeline.models.presets import (
    PATCHES,
    PRESETS,
    LayerNetSpec,
    Preset,
    TransformerSpec,
    UNetSpec,
)
from pipeline.models.transformer import VoxelTransformer
from pipeline.models.unet import VoxelUNet
from pipeline.physics.geometry import Geometry

__all__ = ["LayerEnergyNet", "VoxelUNet", "VoxelTransformer", "VoxelNet", "PRESETS", "PATCHES",
           "Preset", "UNetSpec", "LayerNetSpec", "TransformerSpec", "build_layer_net",
           "build_models", "count_parameters", "use_channels_last"]

VoxelNet = VoxelUNet | VoxelTransformer


def build_models(cfg: ModelConfig, geometry: Geometry) -> tuple[LayerEnergyNet, VoxelNet]:
    """The layer-energy network and the voxel network (``cfg.backbone``) for a regular (L, A, R)
    geometry."""
    if not geometry.is_regular:
        raise ValueError(f"geometry {geometry.name} is not regular (L, A, R); the U-Net needs "
                         f"ds2/ds3-like binning")
    preset = PRESETS[cfg.preset]
    shape = geometry.shape
    freq = cfg.energy_max_freq
    layer_net = build_layer_net(cfg, geometry)
    if cfg.backbone == "transformer":
        patch = tuple(cfg.patch) if cfg.patch else PATCHES.get(geometry.name)
        if patch is None:
            raise ValueError(f"model.patch: no default patch for geometry {geometry.name}; set "
                             f"[layers, angle, radius]")
        voxel_net: VoxelNet = VoxelTransformer(
            shape, preset.transformer, patch, dropout=cfg.dropout,  # type: ignore[arg-type]
            checkpointing=cfg.checkpointing, fp32_first_last=cfg.fp32_first_last,
            energy_max_freq=freq)
    else:
        voxel_net = VoxelUNet(shape, preset.unet, dropout=cfg.dropout,  # type: ignore[arg-type]
                              angle_downsample=cfg.angle_downsample,
                              checkpointing=cfg.checkpointing, fp32_first_last=cfg.fp32_first_last,
                              energy_max_freq=freq)
    return layer_net, voxel_net


def build_layer_net(cfg: ModelConfig, geometry: Geometry) -> LayerEnergyNet:
    """The layer-energy network alone (what a run that generates with another run's voxel network
    needs)."""
    spec = PRESETS[cfg.preset].layer_net
    return LayerEnergyNet(geometry.n_layers, spec, dropout=cfg.dropout, fp32=cfg.fp32_first_last,
                          energy_max_freq=cfg.energy_max_freq)


def use_channels_last(voxel_net: VoxelNet, enabled: bool = True) -> VoxelNet:
    """Run a U-Net's convolutions on channels_last_3d activations (``device.channels_last``); a
    transformer has no convolutions and is returned unchanged."""
    if isinstance(voxel_net, VoxelUNet):
        voxel_net.use_channels_last(enabled)
    return voxel_net


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
