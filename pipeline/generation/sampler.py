"""The sampler of a finished run: its EMA networks, preprocessing, schedule and number of steps.

:func:`load_sampler` reads a training run's or distillation stage's ``DONE.json`` and EMA export
(:mod:`pipeline.models.ema_weights`); the preprocessing statistics travel in the export, so a generation
node needs no access to the training store (older exports fall back to reading it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from pipeline.config import ConfigError, load_config
from pipeline.data import run_layout
from pipeline.data.shower_store import ShowerStore, StoreError
from pipeline.diffusion import CosineSchedule, Prediction, synthesize
from pipeline.models import build_models
from pipeline.models.ema_weights import load_ema_weights
from pipeline.physics.geometry import Geometry, load_geometry
from pipeline.physics.preprocessing import Preprocessor


@dataclass
class Sampler:
    """A finished run's EMA networks, preprocessing and step count, ready to generate."""

    layer_net: torch.nn.Module
    voxel_unet: torch.nn.Module  # the voxel network, U-Net or transformer
    preprocessor: Preprocessor
    schedule: CosineSchedule
    steps: int
    eta: float
    geometry: Geometry
    info: dict[str, Any]
    prediction: Prediction = "v"

    def __call__(self, energies: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return synthesize(energies, seeds, self.layer_net, self.voxel_unet, self.preprocessor, self.steps,
                        schedule=self.schedule, eta=self.eta, prediction=self.prediction)


def load_sampler(model_dir: Path, device: torch.device, *, compile: bool = False, compile_mode: str = "default",
                 channels_last: bool = False) -> Sampler:
    """The EMA networks of the finished run (training or distillation stage) in ``model_dir``; optionally
    compiled with static shapes (``compile_mode`` "reduce-overhead" adds CUDA graphs) and with the U-Net
    in channels_last_3d memory format."""
    done = run_layout.read_done(model_dir)
    if done is None:
        raise ConfigError(f"generate.model: {model_dir} has no {run_layout.DONE_FILE}: the training or distillation "
                          f"stage has not finished there")
    cfg = load_config(done["config"])
    parts, meta = load_ema_weights(done["ema"], device)
    store_path = Path(done["store"])
    stats = meta.get("preprocessing_stats")
    if stats is None:  # exports without the statistics: read them from the training store
        try:
            stats = ShowerStore(store_path).stats
        except StoreError as err:
            raise ConfigError(f"generate.model: the preprocessing statistics come from the training store "
                              f"{store_path}, which cannot be read: {err}") from None
    geometry = load_geometry(done["geometry"])
    layer_net, unet = build_models(cfg.model, geometry)
    layer_net.load_state_dict(parts["layer_net"])
    unet.load_state_dict(parts["voxel_unet"])
    layer_net, unet = layer_net.to(device).eval(), unet.to(device).eval()
    if channels_last:
        unet.use_channels_last()
    if compile:
        layer_net = torch.compile(layer_net, dynamic=False, mode=compile_mode)
        unet = torch.compile(unet, dynamic=False, mode=compile_mode)
    info = {"model_dir": str(model_dir.resolve()), "stage": done.get("stage", 0),
            "sample_steps": done.get("sample_steps", cfg.diffusion.sample_steps), "ema": done["ema"],
            "ema_sha256": done.get("ema_sha256"), "preset": cfg.model.preset, "backbone": cfg.model.backbone,
            "prediction": cfg.diffusion.prediction, "training_store": str(store_path)}
    return Sampler(layer_net, unet, Preprocessor(stats, geometry).to(device),
                   CosineSchedule.from_config(cfg.diffusion), int(info["sample_steps"]), cfg.diffusion.eta,
                   geometry, info, cfg.diffusion.prediction)
