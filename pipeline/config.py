"""The project's config schema: one YAML file per dataset and scale (``configs/*.yaml``).

Load with :func:`load_config` (dotted overrides such as ``--set data.batch_size=64``); every
stage reads the same file and writes the resolved config into the run directory.
Paths are relative to the working directory of the command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from pipeline import config_loader
from pipeline.config_loader import ConfigError
from pipeline.store import StoreLayout

GeometryName = Literal["ds1-photons", "ds1-pions", "ds2", "ds3"]


@dataclass
class RunConfig:
    """Where a run's outputs go and its master seed."""

    dir: str = "runs/default"
    seed: int = 0


@dataclass
class StandinConfig:
    """Simulate stand-in input files with data_tools.simulate when the inputs are missing."""

    n: int = 2048
    seed: int = 1
    workers: int = 1

    def check(self, path: str) -> None:
        if self.n < 1:
            raise ConfigError(f"{path}.n: number of stand-in showers must be >= 1, got {self.n}")
        if self.workers < 1:
            raise ConfigError(f"{path}.workers: must be >= 1, got {self.workers}")


@dataclass
class DataConfig:
    """Input files, the converted store and how showers are streamed to training."""

    geometry: GeometryName = "ds3"
    inputs: list[str] = field(default_factory=list)
    store: str = "showers.zarr"
    standin: Optional[StandinConfig] = None
    layout: StoreLayout = field(default_factory=StoreLayout)
    validation_fraction: float = 0.1
    split_seed: int = 0
    batch_size: int = 32  # global: summed over ranks, per optimiser micro-step
    shuffle_chunks: int = 16
    num_workers: int = 2
    prefetch_chunks: int = 8
    resident: bool = False

    def check(self, path: str) -> None:
        if not self.inputs:
            raise ConfigError(f"{path}.inputs: list at least one CaloChallenge HDF5 file")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"{path}.validation_fraction: must be in [0, 1), got {self.validation_fraction}")
        for name in ("batch_size", "shuffle_chunks", "num_workers", "prefetch_chunks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.standin is not None and len(self.inputs) != 1:
            raise ConfigError(f"{path}.standin: stand-in data is simulated into exactly one input file, got {len(self.inputs)}")


@dataclass
class ModelConfig:
    """Network sizes and options (presets in ``pipeline/models/presets.py``)."""

    preset: Literal["tiny", "base", "large"] = "tiny"
    checkpointing: bool = False  # activation checkpointing of the U-Net blocks (large models)
    dropout: float = 0.0
    angle_downsample: int = 1  # at most this many angle halvings (only where the angle count is even)

    def check(self, path: str) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{path}.dropout: must be in [0, 1), got {self.dropout}")
        if self.angle_downsample < 0:
            raise ConfigError(f"{path}.angle_downsample: must be >= 0, got {self.angle_downsample}")


@dataclass
class DiffusionConfig:
    """Continuous-time v-prediction diffusion with a clipped cosine log-SNR schedule."""

    logsnr_min: float = -20.0  # log-SNR at t = 1
    logsnr_max: float = 20.0  # log-SNR at t = 0
    sample_steps: int = 64  # DDIM steps at generation (teacher)
    eta: float = 0.0  # 0: deterministic DDIM; 1: ancestral sampling

    def check(self, path: str) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ConfigError(f"{path}.logsnr_min: must be below logsnr_max ({self.logsnr_max}), got {self.logsnr_min}")
        if self.sample_steps < 1:
            raise ConfigError(f"{path}.sample_steps: must be >= 1, got {self.sample_steps}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"{path}.eta: must be in [0, 1], got {self.eta}")


@dataclass
class Config:
    """The whole pipeline's configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def per_rank_batch(self, world_size: int) -> int:
        """Per-rank batch size; the global batch must split evenly over the ranks."""
        if self.data.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size: {self.data.batch_size} does not divide evenly over {world_size} ranks"
            )
        return self.data.batch_size // world_size


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load and check a config file with ``KEY.PATH=VALUE`` overrides applied."""
    return config_loader.load(Config, path, overrides)


def save_resolved(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """Write the resolved config to ``<run dir>/config.yaml`` and return its path."""
    target = Path(run_dir or cfg.run.dir) / "config.yaml"
    config_loader.save(cfg, target)
    return target
