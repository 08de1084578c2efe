"""The sampler of a finished run: its EMA networks, preprocessing, schedule and number of steps.

:func:`load_sampler` reads a training run's or distillation stage's ``DONE.json`` and EMA export
(:mod:`pipeline.models.ema_weights`); the preprocessing statistics travel in the export, so a
generation node needs no access to the training store (older exports fall back to reading it). The
layer network may come from another run (``generate.layer_model``, a run that trained it alone): it
must share the geometry, the noise schedule and the standardisation of the layer energies and
incident energy (the same store).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.config import Config, ConfigError, load_config
from pipeline.data.run_record import DONE_FILE, RunRecord, read_record
from pipeline.data.shower_store import ShowerStore, StoreError
from pipeline.diffusion import (
    CosineSchedule,
    NetworkSampling,
    shower_seed,
    synthesize,
    synthesize_layers,
)
from pipeline.models import build_layer_net, build_models, use_channels_last
from pipeline.models.ema_weights import load_ema_weights
from pipeline.physics.geometry import Geometry, load_geometry
from pipeline.physics.preprocessing import Preprocessor

# what the layer network's samples and the voxel network share
LAYER_STATS = ("log_energy", "logit_layer_fraction")


@dataclass
class Sampler:
    """A finished run's EMA networks, each with how it is sampled (the layer network may come from
    another run, with its own steps and prediction), the preprocessing, ready to generate."""

    layer: NetworkSampling
    voxel: NetworkSampling  # the voxel network, U-Net or transformer
    preprocessor: Preprocessor
    schedule: CosineSchedule
    eta: float
    geometry: Geometry
    info: dict[str, Any]
    threshold_fractions: bool = False  # sampling.threshold_fractions

    @property
    def steps(self) -> int:
        """The voxel network's DDIM steps: those of the sample."""
        return self.voxel.steps

    def with_steps(self, steps: int) -> Sampler:
        """The same networks, both sampled with ``steps`` DDIM steps."""
        return replace(self, layer=replace(self.layer, steps=steps),
                       voxel=replace(self.voxel, steps=steps))

    def __call__(self, energies: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return synthesize(energies, seeds, self.layer, self.voxel, self.preprocessor,
                          schedule=self.schedule, eta=self.eta,
                          threshold_fractions=self.threshold_fractions)


@dataclass
class _Run:
    """A finished run's record (DONE.json), config, EMA weights and preprocessing statistics."""

    dir: Path
    record: RunRecord
    cfg: Config
    parts: dict[str, dict[str, torch.Tensor]]
    stats: dict[str, Any]

    @property
    def networks(self) -> list[str]:
        return list(self.record.networks)

    @property
    def steps(self) -> int:
        """The DDIM steps of this run or stage."""
        return self.record.sample_steps

    def summary(self) -> dict[str, Any]:
        """What a sample's metadata records of the run it came from."""
        return {"model_dir": str(self.dir.resolve()), "stage": self.record.stage,
                "sample_steps": self.steps, "ema_sha256": self.record.ema_sha256}

    def layer_net(self, geometry: Geometry) -> torch.nn.Module:
        """Its EMA layer-energy network (on the CPU, in training mode)."""
        net = build_layer_net(self.cfg.model, geometry)
        net.load_state_dict(self.parts["layer_net"])
        return net


def _read_run(model_dir: Path, device: torch.device, key: str) -> _Run:
    record = read_record(model_dir)
    if record is None:
        raise ConfigError(f"{key}: {model_dir} has no {DONE_FILE}: the training or distillation "
                          f"stage has not finished there")
    parts, meta = load_ema_weights(record.ema, device)
    store_path = Path(record.store)
    stats = meta.get("preprocessing_stats")
    if stats is None:  # exports without the statistics: read them from the training store
        try:
            stats = ShowerStore(store_path).stats
        except StoreError as err:
            raise ConfigError(f"{key}: the preprocessing statistics come from the training store "
                              f"{store_path}, which cannot be read: {err}") from None
    return _Run(model_dir, record, load_config(record.config, written_by_a_run=True), parts, stats)


def _layer_run(voxel_run: _Run, layer_model_dir: Path | None, device: torch.device) -> _Run:
    """The run whose layer network generates: ``generate.layer_model`` if set, else the voxel
    network's run."""
    if layer_model_dir is None:
        if "layers" not in voxel_run.networks:
            raise ConfigError(f"generate.model: {voxel_run.dir} trained the voxel network alone "
                              f"(train.networks {voxel_run.networks}); set generate.layer_model to "
                              f"the run of its layer network")
        return voxel_run
    run = _read_run(layer_model_dir, device, "generate.layer_model")
    if "layers" not in run.networks:
        raise ConfigError(f"generate.layer_model: {layer_model_dir} did not train the layer "
                          f"network (train.networks {run.networks})")
    if run.record.geometry != voxel_run.record.geometry:
        raise ConfigError(f"generate.layer_model: {layer_model_dir} was trained on "
                          f"{run.record.geometry}, generate.model {voxel_run.dir} on "
                          f"{voxel_run.record.geometry}")
    for name in LAYER_STATS:
        if not all(np.allclose(run.stats[name][k], voxel_run.stats[name][k], rtol=1e-6)
                   for k in ("mean", "std")):
            raise ConfigError(f"generate.layer_model: {layer_model_dir} standardises {name} unlike "
                              f"generate.model {voxel_run.dir} (trained on other stores?); train "
                              f"both networks on the same store")
    d1, d2 = run.cfg.diffusion, voxel_run.cfg.diffusion
    if (d1.process, d1.logsnr_min, d1.logsnr_max) != (d2.process, d2.logsnr_min, d2.logsnr_max):
        raise ConfigError(f"generate.layer_model: {layer_model_dir} uses another noise schedule "
                          f"(diffusion.process, logsnr_min/max) than generate.model "
                          f"{voxel_run.dir}")
    return run


def load_sampler(model_dir: Path, device: torch.device, *, compile: bool = False,
                 compile_mode: str = "default", channels_last: bool = False,
                 layer_model_dir: Path | None = None, clip_x: bool = False,
                 threshold_fractions: bool = False, steps: int | None = None) -> Sampler:
    """The EMA networks of the finished run (training or distillation stage) in ``model_dir``, the
    layer network from ``layer_model_dir`` when given (``generate.layer_model``); optionally
    compiled with static shapes (``compile_mode`` "reduce-overhead" adds CUDA graphs) and with the
    U-Net in channels_last_3d memory format. ``steps`` (``generate.sample_steps``) replaces the
    run's own number of DDIM steps, e.g. to sample a teacher with its last distillation stage's
    steps and see what distillation buys."""
    run = _read_run(model_dir, device, "generate.model")
    if "voxels" not in run.networks:
        raise ConfigError(f"generate.model: {model_dir} trained the layer network alone "
                          f"(train.networks {run.networks}); set generate.model to a voxel "
                          f"network's run and generate.layer_model to this one")
    layer_run = _layer_run(run, layer_model_dir, device)
    cfg = run.cfg
    geometry = load_geometry(run.record.geometry)
    _, voxel_net = build_models(cfg.model, geometry)
    layer_net = layer_run.layer_net(geometry)
    voxel_net.load_state_dict(run.parts["voxel_net"])
    layer_net, voxel_net = layer_net.to(device).eval(), voxel_net.to(device).eval()
    use_channels_last(voxel_net, channels_last)
    if compile:
        layer_net = torch.compile(layer_net, dynamic=False, mode=compile_mode)
        voxel_net = torch.compile(voxel_net, dynamic=False, mode=compile_mode)
    voxel = NetworkSampling(voxel_net, steps or run.steps, cfg.diffusion.prediction, clip_x)
    # the same run's layer network samples like its voxel network
    layer = replace(voxel, model=layer_net)
    info = {**run.summary(), "sample_steps": voxel.steps, "ema": str(run.record.ema),
            "preset": cfg.model.preset, "backbone": cfg.model.backbone,
            "prediction": cfg.diffusion.prediction, "training_store": run.record.store,
            **({"model_sample_steps": run.steps} if steps and steps != run.steps else {})}
    if layer_run is not run:
        layer = NetworkSampling(layer_net, layer_run.steps, layer_run.cfg.diffusion.prediction,
                                clip_x)
        info["layer_model"] = {**layer_run.summary(), "ema": str(layer_run.record.ema),
                               "preset": layer_run.cfg.model.preset, "prediction": layer.prediction}
    return Sampler(layer, voxel, Preprocessor(run.stats, geometry).to(device),
                   CosineSchedule.from_config(cfg.diffusion), cfg.sampling.eta, geometry, info,
                   threshold_fractions)


@dataclass
class LayerSampler:
    """A finished run's EMA layer-energy network alone: ``__call__(energies, seeds)`` -> layer
    energies (B, L) MeV, layers below the readout threshold set to 0
    (:func:`pipeline.diffusion.synthesize_layers`)."""

    layer: NetworkSampling
    preprocessor: Preprocessor
    schedule: CosineSchedule
    geometry: Geometry
    info: dict[str, Any]

    def __call__(self, energies: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return synthesize_layers(energies, seeds, self.layer, self.preprocessor,
                                 schedule=self.schedule)

    def sample(self, energies: np.ndarray, seed: int, batch: int = 4096) -> np.ndarray:
        """Layer energies (N, L) float64 for incident ``energies`` (N,) MeV; entry i from
        ``shower_seed(seed, i)``."""
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
        raise ConfigError(f"{model_dir} did not train the layer network "
                          f"(train.networks {run.networks})")
    geometry = load_geometry(run.record.geometry)
    layer = NetworkSampling(run.layer_net(geometry).to(device).eval(), run.steps,
                            run.cfg.diffusion.prediction, clip_x)
    return LayerSampler(layer, Preprocessor(run.stats, geometry).to(device),
                        CosineSchedule.from_config(run.cfg.diffusion), geometry, run.summary())


@dataclass
class VoxelSampler:
    """A finished run's EMA voxel network alone, conditioned on given layer energies:
    ``__call__(energies, seeds, layer_energies)`` -> showers (B, L, A, R) MeV whose layer energies
    are the given ones (before the threshold). Evaluates the voxel network without the layer
    network's errors, as the monitor of a voxels-only run does."""

    voxel: NetworkSampling
    preprocessor: Preprocessor
    schedule: CosineSchedule
    eta: float
    geometry: Geometry
    info: dict[str, Any]
    threshold_fractions: bool = False  # sampling.threshold_fractions

    def __call__(self, energies: torch.Tensor, seeds: Sequence[int], layer_energies: torch.Tensor,
                 threshold: bool = True) -> torch.Tensor:
        device = self.preprocessor.layer_mean.device
        energies = energies.to(device)
        layers = self.preprocessor.from_layer_energies(layer_energies.to(device, torch.float32),
                                                       energies).layers
        return synthesize(energies, seeds, None, self.voxel, self.preprocessor,
                          schedule=self.schedule, eta=self.eta, threshold=threshold,
                          threshold_fractions=self.threshold_fractions, layers=layers)


def load_voxel_sampler(model_dir: Path, device: torch.device, clip_x: bool = False,
                       threshold_fractions: bool = False) -> VoxelSampler:
    """The voxel network of the finished run (training or distillation stage) in ``model_dir``."""
    run = _read_run(model_dir, device, "model")
    if "voxels" not in run.networks:
        raise ConfigError(f"{model_dir} did not train the voxel network "
                          f"(train.networks {run.networks})")
    geometry = load_geometry(run.record.geometry)
    _, net = build_models(run.cfg.model, geometry)
    net.load_state_dict(run.parts["voxel_net"])
    voxel = NetworkSampling(net.to(device).eval(), run.steps, run.cfg.diffusion.prediction,
                            clip_x)
    return VoxelSampler(voxel, Preprocessor(run.stats, geometry).to(device),
                        CosineSchedule.from_config(run.cfg.diffusion), run.cfg.sampling.eta,
                        geometry, run.summary(), threshold_fractions)
