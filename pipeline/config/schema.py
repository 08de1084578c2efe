"""The project's config schema: one YAML file per dataset and scale (``configs/*.yaml``).

Load with :func:`load_config` (dotted overrides such as ``--set data.global_batch_size=64``); every
stage reads the same file and writes the resolved config into the run directory. One section per
concept: ``sampling`` is how showers are drawn from a model (generation and the training monitor),
``device`` how networks run, ``optim`` the optimiser of training and distillation
(:mod:`.training_sections`); keys that moved name their new home (:mod:`.moved_keys`).
Paths are relative to the working directory of the command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from pipeline.config import loader, moved_keys
from pipeline.config.launch_resources import LaunchConfig
from pipeline.config.loader import ConfigError, check_at_least
from pipeline.config.training_sections import DistillConfig, OptimConfig, TrainConfig

GeometryName = Literal["ds1-photons", "ds1-pions", "ds2", "ds3"]
Codec = Literal["zstd", "blosc-zstd-shuffle", "blosc-zstd-bitshuffle", "blosc-lz4-bitshuffle",
                "gzip"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class RunConfig:
    """Where a run's outputs go and its master seed."""

    dir: str = "runs/default"
    seed: int = 0


@dataclass(frozen=True)
class StoreLayout:
    """Chunking and compression of a store's showers array.

    Defaults chosen by benchmarks/store_benchmark.py.
    """

    chunk_rows: int = 32
    shard_rows: int = 512
    codec: Codec = "zstd"
    level: int = 1

    def check(self, path: str = "store") -> None:
        if self.chunk_rows < 1:
            raise ConfigError(f"{path}.chunk_rows: must be >= 1, got {self.chunk_rows}")
        if self.shard_rows < self.chunk_rows or self.shard_rows % self.chunk_rows:
            raise ConfigError(f"{path}.shard_rows: must be a positive multiple of chunk_rows "
                              f"({self.chunk_rows}), got {self.shard_rows}")
        if not 0 <= self.level <= 22:
            raise ConfigError(f"{path}.level: compression level must be in 0..22, got {self.level}")


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
    global_batch_size: int = 32  # summed over the ranks, per optimiser micro-step
    shuffle_chunks: int = 16
    num_workers: int = 2
    prefetch_chunks: int = 8
    resident: bool = False

    def check(self, path: str) -> None:
        if not self.inputs:
            raise ConfigError(f"{path}.inputs: list at least one CaloChallenge HDF5 file")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"{path}.validation_fraction: must be in [0, 1), got "
                              f"{self.validation_fraction}")
        check_at_least(self, path, 1, ("global_batch_size", "shuffle_chunks", "num_workers",
                                       "prefetch_chunks"))
        if self.standin is not None and len(self.inputs) != 1:
            raise ConfigError(f"{path}.standin: stand-in data is simulated into exactly one input "
                              f"file, got {len(self.inputs)}")


@dataclass
class ModelConfig:
    """Network sizes and options (presets in ``pipeline/models/presets.py``)."""

    preset: Literal["tiny", "base", "large"] = "tiny"
    # the voxel network (models/unet.py, transformer.py)
    backbone: Literal["unet", "transformer"] = "unet"
    # transformer patch [layers, angle, radius]; None: per geometry
    patch: Optional[list[int]] = None
    checkpointing: bool = False  # activation checkpointing of the U-Net blocks (large models)
    dropout: float = 0.0
    # at most this many angle halvings (only where the angle count is even)
    angle_downsample: int = 1
    # under bf16: U-Net stem, output conv and the layer network in fp32
    fp32_first_last: bool = True
    energy_max_freq: float = 100.0  # Fourier features of standardised log E_inc at pi * [1, this]

    def check(self, path: str) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{path}.dropout: must be in [0, 1), got {self.dropout}")
        if self.angle_downsample < 0:
            raise ConfigError(f"{path}.angle_downsample: must be >= 0, got {self.angle_downsample}")
        if not self.energy_max_freq >= 1:
            raise ConfigError(f"{path}.energy_max_freq: must be >= 1, got {self.energy_max_freq}")
        if self.patch is not None and (len(self.patch) != 3 or min(self.patch) < 1):
            raise ConfigError(f"{path}.patch: expected three positive sizes [layers, angle, "
                              f"radius], got {self.patch}")


@dataclass(frozen=True)
class VoxelTrainingConfig:
    """Which noise levels the voxel network trains on and how each is weighted
    (:mod:`pipeline.diffusion.training_objective`); the layer network and the samplers are
    unchanged."""

    time_sampling: Literal["uniform", "logit_normal"] = "uniform"  # t ~ U(0,1) or sigmoid(N(m, s))
    logit_mean: float = 0.0
    logit_std: float = 1.0
    logsnr_shift: float = 0.0  # added to each drawn time's log-SNR (< 0: noisier)
    # the weight of the x error at each log-SNR (flow: flow matching's velocity MSE)
    weighting: Literal["v", "min_snr", "sigmoid", "flow"] = "v"
    min_snr_gamma: float = 5.0  # min_snr: x-MSE weight min(SNR, gamma)
    sigmoid_bias: float = 0.0  # sigmoid: eps-MSE weight sigmoid(bias - log SNR)

    def check(self, path: str) -> None:
        if self.logit_std <= 0:
            raise ConfigError(f"{path}.logit_std: must be > 0, got {self.logit_std}")
        if self.min_snr_gamma <= 0:
            raise ConfigError(f"{path}.min_snr_gamma: must be > 0, got {self.min_snr_gamma}")


@dataclass
class DiffusionConfig:
    """Continuous-time diffusion with a clipped log-SNR schedule (what the networks learn)."""

    # vp: the variance-preserving cosine schedule; flow: rectified flow's straight path
    # z = (1 - t) x + t eps (pipeline.diffusion.schedule.FlowSchedule)
    process: Literal["vp", "flow"] = "vp"
    logsnr_min: float = -20.0  # log-SNR at t = 1
    logsnr_max: float = 20.0  # log-SNR at t = 0
    prediction: Literal["v", "x"] = "v"  # what the networks output; the loss stays in v-space
    voxel_training: VoxelTrainingConfig = field(default_factory=VoxelTrainingConfig)

    def check(self, path: str) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ConfigError(f"{path}.logsnr_min: must be below logsnr_max ({self.logsnr_max}), "
                              f"got {self.logsnr_min}")


@dataclass
class SamplingConfig:
    """How showers are drawn from a trained model: generation, the training monitor,
    distillation."""

    # DDIM steps of the trained model; distillation stages halve them (distill.final_steps)
    steps: int = 64
    eta: float = 0.0  # 0: deterministic DDIM; 1: ancestral sampling
    # clip each step's clean-sample estimate to every bin's range (fraction 0..1)
    clip_x: bool = False
    # zero voxel fractions under threshold / E_layer, then renormalise
    threshold_fractions: bool = False

    def check(self, path: str) -> None:
        if self.steps < 1:
            raise ConfigError(f"{path}.steps: must be >= 1, got {self.steps}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"{path}.eta: must be in [0, 1], got {self.eta}")


@dataclass
class DeviceConfig:
    """How the networks run, in training and in generation."""

    precision: Precision = "auto"  # auto: bf16 autocast on GPU (fp32 master weights), fp32 on CPU
    # U-Net convolutions on channels_last_3d activations (measure: gpu_check)
    channels_last: bool = False
    # let cuDNN pick the fastest convolution algorithms for the fixed shapes
    cudnn_benchmark: bool = True


@dataclass
class GenerateConfig:
    """Mass generation (``pipeline.generate``) into a zarr sample, and its HDF5 export."""

    n: int = 100_000  # showers; 0: one per incident energy of energies_from
    seed: int = 0  # shower i's incident energy and noise depend only on (seed, i)
    # final (last distillation stage), teacher, stage_K, or a run/stage directory
    model: str = "final"
    layer_model: Optional[str] = None  # run/stage directory of a layer network trained apart
    # DDIM steps; None: the model's own (its distillation stage's)
    sample_steps: Optional[int] = None
    out: Optional[str] = None  # zarr sample; default <run.dir>/samples/generated.zarr
    # CaloChallenge HDF5 written by data_tools.export; default <sample>.hdf5
    export: Optional[str] = None
    export_dtype: Literal["float32", "float64"] = "float32"
    # showers per exported file (<export>_1.hdf5, ... and an index <export>.files.json); 0: one file
    export_rows_per_file: int = 0
    # HDF5 file or store: shower i gets its i-th incident energy
    energies_from: Optional[str] = None
    # MeV, log-uniform without energies_from
    energy_range: tuple[float, float] = (1_000.0, 1_000_000.0)
    block_size: int = 4096  # showers per work block (a multiple of layout.shard_rows)
    # showers per forward pass; 0: a divisor of shard_rows that fills the GPU
    per_rank_batch_size: int = 0
    # torch.compile the networks with static shapes (the last batch is padded)
    compile: bool = False
    # torch.compile's mode; reduce-overhead adds CUDA graphs
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    # threads that copy, compress and write shards beside the networks; 0: serial
    writer_threads: int = 2
    layout: StoreLayout = field(default_factory=StoreLayout)

    def check(self, path: str) -> None:
        if self.n < 0:
            raise ConfigError(f"{path}.n: must be >= 0, got {self.n}")
        if self.n == 0 and self.energies_from is None:
            raise ConfigError(f"{path}.n: 0 (one shower per reference energy) needs "
                              f"{path}.energies_from")
        if self.seed < 0:
            raise ConfigError(f"{path}.seed: must be >= 0, got {self.seed}")
        if self.sample_steps is not None and self.sample_steps < 1:
            raise ConfigError(f"{path}.sample_steps: must be >= 1 (or null: the model's own), "
                              f"got {self.sample_steps}")
        lo, hi = self.energy_range
        if not 0 < lo <= hi:
            raise ConfigError(f"{path}.energy_range: expected 0 < min <= max (MeV), "
                              f"got {list(self.energy_range)}")
        if self.per_rank_batch_size < 0:
            raise ConfigError(f"{path}.per_rank_batch_size: must be >= 0 (0: automatic), "
                              f"got {self.per_rank_batch_size}")
        if self.export_rows_per_file < 0:
            raise ConfigError(f"{path}.export_rows_per_file: must be >= 0 (0: one file), "
                              f"got {self.export_rows_per_file}")
        if self.writer_threads < 0:
            raise ConfigError(f"{path}.writer_threads: must be >= 0 (0: write in the generating "
                              f"thread), got {self.writer_threads}")
        if self.block_size < 1 or self.block_size % self.layout.shard_rows:
            raise ConfigError(f"{path}.block_size: must be a positive multiple of "
                              f"{path}.layout.shard_rows ({self.layout.shard_rows}), "
                              f"got {self.block_size}")
        if self.model.startswith("stage_") and not re.fullmatch(r"stage_\d+", self.model):
            raise ConfigError(f"{path}.model: expected final, teacher, stage_K (K a number) or a "
                              f"run directory, got {self.model!r}")


@dataclass
class EvaluateConfig:
    """CaloChallenge evaluation (``pipeline.evaluate``) of the generated sample against a
    reference."""

    reference: Optional[str] = None  # reference HDF5 file or store (Geant4: dataset_3_3/4.hdf5)
    reference_standin: Optional[StandinConfig] = None  # simulate the reference when it is missing
    out: Optional[str] = None  # report directory; default <run.dir>/evaluation
    classifiers: str = "low,high"  # comma list of low, high, or none
    # the challenge's classifier, or quick (smoke runs only)
    classifier_protocol: str = "calochallenge"
    # None: the protocol's (calochallenge 50, quick at most 20)
    classifier_epochs: Optional[int] = None
    # more pipeline.evaluate options: [--bins, "30"]
    extra_args: list[str] = field(default_factory=list)

    def check(self, path: str) -> None:
        if self.classifier_protocol not in ("calochallenge", "quick"):
            raise ConfigError(f"{path}.classifier_protocol: expected calochallenge or quick, got "
                              f"{self.classifier_protocol!r}")
        if self.classifier_epochs is not None and self.classifier_epochs < 1:
            raise ConfigError(f"{path}.classifier_epochs: must be >= 1, "
                              f"got {self.classifier_epochs}")


@dataclass
class Config:
    """The whole pipeline's configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def check(self, path: str) -> None:
        steps, final = self.sampling.steps, self.distill.final_steps
        if final > steps or steps % final or (steps // final) & (steps // final - 1):
            raise ConfigError(f"distill.final_steps: {final} must be sampling.steps ({steps}) "
                              f"divided by a power of two")

    def per_rank_batch(self, world_size: int) -> int:
        """Per-rank batch size; the global batch must split evenly over the ranks."""
        if self.data.global_batch_size % world_size:
            raise ConfigError(f"data.global_batch_size: {self.data.global_batch_size} does not "
                              f"divide evenly over {world_size} ranks")
        return self.data.global_batch_size // world_size


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *,
                written_by_a_run: bool = False) -> Config:
    """Load and check a config file with ``KEY.PATH=VALUE`` overrides applied.

    A key that moved is an error naming its new home; ``written_by_a_run`` (a run directory's
    resolved config, possibly older than the move) moves the values instead.
    """
    prepare = moved_keys.upgrade if written_by_a_run else moved_keys.reject_moved
    return loader.load(Config, path, overrides, prepare=prepare)


RESOLVED_CONFIG = "config.yaml"  # the resolved config every stage writes into its run directory


def save_resolved(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """Write the resolved config to ``<run dir>/config.yaml`` and return its path."""
    target = Path(run_dir or cfg.run.dir) / RESOLVED_CONFIG
    loader.save(cfg, target)
    return target
