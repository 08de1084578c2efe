"""The sampler of a finished run: its EMA networks, preprocessing, schedule and number of steps.

:func:`load_sampler` reads a training run's or distillation stage's ``DONE.json`` and EMA export
(:mod:`pipeline.models.ema_weights`); the preprocessing statistics travel in the export, so a generation
node needs no access to the training store (older exports fall back to reading it). The layer network may come
from another run (``generate.layer_model``, a run that trained it alone): it must share the geometry, the noise
schedule and the standardisation of the layer energies and incident energy (the same store).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.config import Config, ConfigError, load_config
from pipeline.data import run_layout
from pipeline.data.shower_store import ShowerStore, StoreError
from pipeline.diffusion import NETWORKS, CosineSchedule, Prediction, shower_seed, synthesize, synthesize_layers
from pipeline.models import build_layer_net, build_models
from pipeline.models.ema_weights import load_ema_weights
from pipeline.physics.geometry import Geometry, load_geometry
from pipeline.physics.preprocessing import Preprocessor

LAYER_STATS = ("log_energy", "logit_layer_fraction")  # what the layer network's samples and the voxel network share


@dataclass
class Sampler:
    """A finished run's EMA networks, preprocessing and step count, ready to generate (the layer network may
    come from another run: ``layer_steps`` and ``layer_prediction`` are then its own)."""

    layer_net: torch.nn.Module
    voxel_unet: torch.nn.Module  # the voxel network, U-Net or transformer
    preprocessor: Preprocessor
    schedule: CosineSchedule
    steps: int
    eta: float
    geometry: Geometry
    info: dict[str, Any]
    prediction: Prediction = "v"
    layer_steps: int | None = None  # default: steps
    layer_prediction: Prediction | None = None  # default: prediction
    clip: bool = False  # generate.clip_x
    threshold_fractions: bool = False  # generate.threshold_fractions

    def __call__(self, energies: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return synthesize(energies, seeds, self.layer_net, self.voxel_unet, self.preprocessor, self.steps,
                          schedule=self.schedule, eta=self.eta, prediction=self.prediction, layer_steps=self.layer_steps,
                          layer_prediction=self.layer_prediction, clip=self.clip,
                          threshold_fractions=self.threshold_fractions)


@dataclass
class _Run:
    """A finished run's DONE.json, config, EMA weights and preprocessing statistics."""

    dir: Path
    done: dict[str, Any]
    cfg: Config
    parts: dict[str, dict[str, torch.Tensor]]
    stats: dict[str, Any]

    @property
    def networks(self) -> list[str]:
        return list(self.done.get("networks", NETWORKS))

    @property
    def steps(self) -> int:
        """The DDIM steps of this run or stage."""
        return int(self.done.get("sample_steps", self.cfg.diffusion.sample_steps))

    def layer_net(self, geometry: Geometry) -> torch.nn.Module:
        """Its EMA layer-energy network (on the CPU, in training mode)."""
        net = build_layer_net(self.cfg.model, geometry)
        net.load_state_dict(self.parts["layer_net"])
        return net


def _read_run(model_dir: Path, device: torch.device, key: str) -> _Run:
    done = run_layout.read_done(model_dir)
    if done is None:
        raise ConfigError(f"{key}: {model_dir} has no {run_layout.DONE_FILE}: the training or distillation "
                          f"stage has not finished there")
    parts, meta = load_ema_weights(done["ema"], device)
    store_path = Path(done["store"])
    stats = meta.get("preprocessing_stats")
    if stats is None:  # exports without the statistics: read them from the training store
        try:
            stats = ShowerStore(store_path).stats
        except StoreError as err:
            raise ConfigError(f"{key}: the preprocessing statistics come from the training store "
                              f"{store_path}, which cannot be read: {err}") from None
    return _Run(model_dir, done, load_config(done["config"]), parts, stats)


def _layer_run(voxel_run: _Run, layer_model_dir: Path | None, device: torch.device) -> _Run:
    """The run whose layer network generates: ``generate.layer_model`` if set, else the voxel network's run."""
    if layer_model_dir is None:
        if "layers" not in voxel_run.networks:
            raise ConfigError(f"generate.model: {voxel_run.dir} trained the voxel network alone (train.networks "
                              f"{voxel_run.networks}); set generate.layer_model to the run of its layer network")
        return voxel_run
    run = _read_run(layer_model_dir, device, "generate.layer_model")
    if "layers" not in run.networks:
        raise ConfigError(f"generate.layer_model: {layer_model_dir} did not train the layer network "
                          f"(train.networks {run.networks})")
    if run.done["geometry"] != voxel_run.done["geometry"]:
        raise ConfigError(f"generate.layer_model: {layer_model_dir} was trained on {run.done['geometry']}, "
                          f"generate.model {voxel_run.dir} on {voxel_run.done['geometry']}")
    for name in LAYER_STATS:
        if not all(np.allclose(run.stats[name][k], voxel_run.stats[name][k], rtol=1e-6) for k in ("mean", "std")):
            raise ConfigError(f"generate.layer_model: {layer_model_dir} standardises {name} unlike generate.model "
                              f"{voxel_run.dir} (trained on other stores?); train both networks on the same store")
    d1, d2 = run.cfg.diffusion, voxel_run.cfg.diffusion
    if (d1.logsnr_min, d1.logsnr_max) != (d2.logsnr_min, d2.logsnr_max):
        raise ConfigError(f"generate.layer_model: {layer_model_dir} uses another noise schedule (diffusion.logsnr_min/max)"
                          f" than generate.model {voxel_run.dir}")
    return run


def load_sampler(model_dir: Path, device: torch.device, *, compile: bool = False, compile_mode: str = "default",
                 channels_last: bool = False, layer_model_dir: Path | None = None, clip_x: bool = False,
                 threshold_fractions: bool = False, steps: int | None = None) -> Sampler:
    """The EMA networks of the finished run (training or distillation stage) in ``model_dir``, the layer network
    from ``layer_model_dir`` when given (``generate.layer_model``); optionally compiled with static shapes
    (``compile_mode`` "reduce-overhead" adds CUDA graphs) and with the U-Net in channels_last_3d memory format.
    ``steps`` (``generate.sample_steps``) replaces the run's own number of DDIM steps, e.g. to sample a teacher
    with its last distillation stage's steps and see what distillation buys."""
    run = _read_run(model_dir, device, "generate.model")
    if "voxels" not in run.networks:
        raise ConfigError(f"generate.model: {model_dir} trained the layer network alone (train.networks "
                          f"{run.networks}); set generate.model to a voxel network's run and generate.layer_model to "
                          f"this one")
    layer_run = _layer_run(run, layer_model_dir, device)
    cfg, done = run.cfg, run.done
    geometry = load_geometry(done["geometry"])
    _, unet = build_models(cfg.model, geometry)
    layer_net = layer_run.layer_net(geometry)
    unet.load_state_dict(run.parts["voxel_unet"])
    layer_net, unet = layer_net.to(device).eval(), unet.to(device).eval()
    if channels_last:
        unet.use_channels_last()
    if compile:
        layer_net = torch.compile(layer_net, dynamic=False, mode=compile_mode)
        unet = torch.compile(unet, dynamic=False, mode=compile_mode)
    info = {"model_dir": str(model_dir.resolve()), "stage": done.get("stage", 0), "sample_steps": steps or run.steps,
            "ema": done["ema"], "ema_sha256": done.get("ema_sha256"), "preset": cfg.model.preset,
            "backbone": cfg.model.backbone, "prediction": cfg.diffusion.prediction, "training_store": done["store"],
            **({"model_sample_steps": run.steps} if steps and steps != run.steps else {})}
    layer_steps = layer_prediction = None
    if layer_run is not run:
        layer_done = layer_run.done
        layer_steps = layer_run.steps
        layer_prediction = layer_run.cfg.diffusion.prediction
        info["layer_model"] = {"model_dir": str(layer_run.dir.resolve()), "stage": layer_done.get("stage", 0),
                               "sample_steps": layer_steps, "ema": layer_done["ema"],
                               "ema_sha256": layer_done.get("ema_sha256"), "preset": layer_run.cfg.model.preset,
                               "prediction": layer_prediction}
    return Sampler(layer_net, unet, Preprocessor(run.stats, geometry).to(device),
                   CosineSchedule.from_config(cfg.diffusion), int(info["sample_steps"]), cfg.diffusion.eta,
                   geometry, info, cfg.diffusion.prediction, layer_steps, layer_prediction, clip_x, threshold_fractions)


@dataclass
class LayerSampler:
    """A finished run's EMA layer-energy network alone: ``__call__(energies, seeds)`` -> layer energies (B, L) MeV,
    layers below the readout threshold set to 0 (:func:`pipeline.diffusion.synthesize_layers`)."""

    layer_net: torch.nn.Module
    preprocessor: Preprocessor
    schedule: CosineSchedule
    steps: int
    geometry: Geometry
    prediction: Prediction
    info: dict[str, Any]
    clip: bool = False  # generate.clip_x

    def __call__(self, energies: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return synthesize_layers(energies, seeds, self.layer_net, self.preprocessor, self.steps,
                                 schedule=self.schedule, prediction=self.prediction, clip=self.clip)

    def sample(self, energies: np.ndarray, seed: int, batch: int = 4096) -> np.ndarray:
        """Layer energies (N, L) float64 for incident ``energies`` (N,) MeV; entry i from ``shower_seed(seed, i)``."""
        parts = []
        for start in range(0, len(energies), batch):
            rows = range(start, min(start + batch, len(energies)))
            e = torch.as_tensor(np.asarray(energies[rows.start:rows.stop], dtype=np.float64))
            parts.append(self(e, [shower_seed(seed, i) for i in rows]).double().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, self.geometry.n_layers))


def load_layer_sampler(model_dir: Path, device: torch.device, clip_x: bool = False) -> LayerSampler:
    """The layer network of the finished run (training or distillation stage) in ``model_dir``."""
    run = _read_run(model_dir, device, "model")
    if "layers" not in run.networks:
        raise ConfigError(f"{model_dir} did not train the layer network (train.networks {run.networks})")
    geometry = load_geometry(run.done["geometry"])
    info = {"model_dir": str(model_dir.resolve()), "stage": run.done.get("stage", 0), "sample_steps": run.steps,
            "ema_sha256": run.done.get("ema_sha256")}
    return LayerSampler(run.layer_net(geometry).to(device).eval(), Preprocessor(run.stats, geometry).to(device),
                        CosineSchedule.from_config(run.cfg.diffusion), run.steps, geometry, run.cfg.diffusion.prediction,
                        info, clip_x)


@dataclass
class VoxelSampler:
    """A finished run's EMA voxel network alone, conditioned on given layer energies:
    ``__call__(energies, seeds, layer_energies)`` -> showers (B, L, A, R) MeV whose layer energies are the given
    ones (before the threshold). Evaluates the voxel network without the layer network's errors, as the monitor
    of a voxels-only run does."""

    voxel_net: torch.nn.Module
    preprocessor: Preprocessor
    schedule: CosineSchedule
    steps: int
    eta: float
    geometry: Geometry
    prediction: Prediction
    info: dict[str, Any]
    clip: bool = False  # generate.clip_x
    threshold_fractions: bool = False  # generate.threshold_fractions

    def __call__(self, energies: torch.Tensor, seeds: Sequence[int], layer_energies: torch.Tensor,
                 threshold: bool = True) -> torch.Tensor:
        device = self.preprocessor.layer_mean.device
        energies = energies.to(device)
        layers = self.preprocessor.from_layer_energies(layer_energies.to(device, torch.float32), energies).layers
        return synthesize(energies, seeds, None, self.voxel_net, self.preprocessor, self.steps, schedule=self.schedule,
                          eta=self.eta, threshold=threshold, prediction=self.prediction, layers=layers,
                          clip=self.clip, threshold_fractions=self.threshold_fractions)


def load_voxel_sampler(model_dir: Path, device: torch.device, clip_x: bool = False,
                       threshold_fractions: bool = False) -> VoxelSampler:
    """The voxel network of the finished run (training or distillation stage) in ``model_dir``."""
    run = _read_run(model_dir, device, "model")
    if "voxels" not in run.networks:
        raise ConfigError(f"{model_dir} did not train the voxel network (train.networks {run.networks})")
    geometry = load_geometry(run.done["geometry"])
    _, net = build_models(run.cfg.model, geometry)
    net.load_state_dict(run.parts["voxel_unet"])
    info = {"model_dir": str(model_dir.resolve()), "stage": run.done.get("stage", 0), "sample_steps": run.steps,
            "ema_sha256": run.done.get("ema_sha256")}
    return VoxelSampler(net.to(device).eval(), Preprocessor(run.stats, geometry).to(device),
                        CosineSchedule.from_config(run.cfg.diffusion), run.steps, run.cfg.diffusion.eta, geometry,
                        run.cfg.diffusion.prediction, info, clip_x, threshold_fractions)
