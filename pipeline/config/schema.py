"""The project's config schema: one YAML file per dataset and scale (``configs/*.yaml``).

Load with :func:`load_config` (dotted overrides such as ``--set data.batch_size=64``); every
stage reads the same file and writes the resolved config into the run directory.
Paths are relative to the working directory of the command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from pipeline.config import loader
from pipeline.config.launch_resources import LaunchConfig
from pipeline.config.loader import ConfigError

GeometryName = Literal["ds1-photons", "ds1-pions", "ds2", "ds3"]
Codec = Literal["zstd", "blosc-zstd-shuffle", "blosc-zstd-bitshuffle", "blosc-lz4-bitshuffle", "gzip"]


@dataclass
class RunConfig:
    """Where a run's outputs go and its master seed."""

    dir: str = "runs/default"
    seed: int = 0


@dataclass(frozen=True)
class StoreLayout:
    """Chunking and compression of a store's showers array (defaults chosen by benchmarks/store_benchmark.py)."""

    chunk_rows: int = 32
    shard_rows: int = 512
    codec: Codec = "zstd"
    level: int = 1

    def check(self, path: str = "store") -> None:
        if self.chunk_rows < 1:
            raise ConfigError(f"{path}.chunk_rows: must be >= 1, got {self.chunk_rows}")
        if self.shard_rows < self.chunk_rows or self.shard_rows % self.chunk_rows:
            raise ConfigError(
                f"{path}.shard_rows: must be a positive multiple of chunk_rows ({self.chunk_rows}), got {self.shard_rows}"
            )
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
    backbone: Literal["unet", "transformer"] = "unet"  # the voxel network (pipeline/models/unet.py, transformer.py)
    patch: Optional[list[int]] = None  # transformer patch [layers, angle, radius]; default per geometry (presets.py)
    checkpointing: bool = False  # activation checkpointing of the U-Net blocks (large models)
    dropout: float = 0.0
    angle_downsample: int = 1  # at most this many angle halvings (only where the angle count is even)
    fp32_first_last: bool = True  # under bf16 autocast: U-Net stem and output conv and the layer network in fp32
    energy_max_freq: float = 100.0  # Fourier features of the standardised log E_inc at pi * [1, this] (all networks)

    def check(self, path: str) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{path}.dropout: must be in [0, 1), got {self.dropout}")
        if self.angle_downsample < 0:
            raise ConfigError(f"{path}.angle_downsample: must be >= 0, got {self.angle_downsample}")
        if not self.energy_max_freq >= 1:
            raise ConfigError(f"{path}.energy_max_freq: must be >= 1, got {self.energy_max_freq}")
        if self.patch is not None and (len(self.patch) != 3 or min(self.patch) < 1):
            raise ConfigError(f"{path}.patch: expected three positive sizes [layers, angle, radius], got {self.patch}")


@dataclass
class DiffusionConfig:
    """Continuous-time v-prediction diffusion with a clipped cosine log-SNR schedule."""

    logsnr_min: float = -20.0  # log-SNR at t = 1
    logsnr_max: float = 20.0  # log-SNR at t = 0
    sample_steps: int = 64  # DDIM steps at generation (teacher)
    eta: float = 0.0  # 0: deterministic DDIM; 1: ancestral sampling
    prediction: Literal["v", "x"] = "v"  # what the networks output; the loss stays in v-space (schedule.py)

    def check(self, path: str) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ConfigError(f"{path}.logsnr_min: must be below logsnr_max ({self.logsnr_max}), got {self.logsnr_min}")
        if self.sample_steps < 1:
            raise ConfigError(f"{path}.sample_steps: must be >= 1, got {self.sample_steps}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"{path}.eta: must be in [0, 1], got {self.eta}")


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging of ``pipeline.train`` (steps are optimiser steps)."""

    networks: list[Literal["layers", "voxels"]] = field(default_factory=lambda: ["layers", "voxels"])  # trained here
    max_steps: int = 100_000  # length of the run and of the cosine schedule (``--max-steps`` overrides it)
    lr: float = 2e-4  # peak learning rate (AdamW)
    warmup_steps: int = 1000  # linear warm-up from lr / warmup_steps to lr
    min_lr_ratio: float = 0.05  # cosine decay from lr to lr * min_lr_ratio at max_steps
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.01  # decoupled; matrices and convolution kernels only
    grad_clip: float = 1.0  # global gradient-norm clipping; 0 disables it
    grad_accum: int = 1  # micro-batches per optimiser step (global batch = data.batch_size * grad_accum)
    zero_stage: Literal[1, 2] = 2  # DeepSpeed ZeRO stage
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    ema_decay: float = 0.9999  # EMA of the weights (fp32), once per optimiser step, warmed up as (1+n)/(10+n)
    checkpoint_every_steps: int = 1000  # 0: off
    checkpoint_every_minutes: float = 30.0  # 0: off
    keep_checkpoints: int = 2  # newest checkpoints kept in <run.dir>/checkpoints
    val_every_steps: int = 1000  # validation loss on the store's validation split; 0: off
    val_batches: int = 16  # per rank, per validation
    log_every_steps: int = 50  # CSV / TensorBoard rows (averaged over the interval)
    init_from: Optional[str] = None  # checkpoint tag directory to take weights and EMA from (fresh optimiser)
    collective_timeout_minutes: float = 5.0  # a rank stuck this long in a collective ends the run (a dead peer)
    dequantize_empty: bool = False  # empty voxels as random fractions below the readout threshold (preprocessing.py)
    eval_every_steps: int = 0  # fidelity monitor (pipeline.training.monitor): every N steps and at the end; 0: off
    eval_showers: int = 512  # showers it generates and compares with validation showers of the same energies
    eval_sample_steps: int = 0  # its DDIM steps; 0: the run's diffusion.sample_steps
    eval_bins: int = 20  # histogram bins of its separation powers
    fused_optimizer: bool = True  # fused AdamW kernel on GPU (one launch for all tensors; ignored on CPU)
    channels_last: bool = False  # U-Net convolutions on channels_last_3d activations (cuDNN; measure with gpu_check)
    cudnn_benchmark: bool = True  # let cuDNN pick the fastest convolution algorithms for the fixed shapes

    def check(self, path: str) -> None:
        if not self.networks or len(set(self.networks)) != len(self.networks):
            raise ConfigError(f"{path}.networks: list layers, voxels or both, each once; got {self.networks}")
        for name in ("max_steps", "grad_accum", "keep_checkpoints", "val_batches", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every_steps", "val_every_steps", "weight_decay", "grad_clip",
                     "checkpoint_every_minutes", "eval_every_steps", "eval_sample_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}: must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"{path}.lr: must be > 0, got {self.lr}")
        if self.eval_showers < 2 or self.eval_bins < 2:
            raise ConfigError(f"{path}.eval_showers and {path}.eval_bins: must be >= 2, got {self.eval_showers} and "
                              f"{self.eval_bins}")
        if not self.collective_timeout_minutes > 0:
            raise ConfigError(f"{path}.collective_timeout_minutes: must be > 0, got {self.collective_timeout_minutes}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{path}.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{path}.betas: expected two numbers in [0, 1), got {list(self.betas)}")
        if not self.eps > 0:
            raise ConfigError(f"{path}.eps: must be > 0, got {self.eps}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"{path}.ema_decay: must be in [0, 1), got {self.ema_decay}")


@dataclass
class DistillConfig:
    """Progressive distillation (``pipeline.distill``): stage k halves the sampling steps of stage k - 1.

    Stage 0 is the trained model with ``diffusion.sample_steps``; stages run until ``final_steps``.
    Every other training setting (batch, ZeRO, checkpoints, validation, logging) comes from ``train``.
    """

    final_steps: int = 8  # DDIM steps of the last stage's student
    max_steps: int = 20_000  # optimiser steps per stage
    lr: float = 5e-5  # peak learning rate per stage (warm-up + cosine, like training)
    warmup_steps: int = 200
    ema_decay: float = 0.999

    def check(self, path: str) -> None:
        for name in ("final_steps", "max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"{path}.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not self.lr > 0:
            raise ConfigError(f"{path}.lr: must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"{path}.ema_decay: must be in [0, 1), got {self.ema_decay}")

    def student_steps(self, sample_steps: int) -> list[int]:
        """Sampling steps of stages 1..K: ``sample_steps / 2, / 4, ..., final_steps``."""
        steps, out = sample_steps, []
        while steps > self.final_steps:
            steps //= 2
            out.append(steps)
        return out


@dataclass
class GenerateConfig:
    """Mass generation (``pipeline.generate``) into a zarr sample, and its HDF5 export."""

    n: int = 100_000  # showers; 0: one per incident energy of energies_from
    seed: int = 0  # shower i's incident energy and noise depend only on (seed, i)
    model: str = "final"  # final (last distillation stage), teacher, stage_K, or a run/stage directory
    layer_model: Optional[str] = None  # run/stage directory of a layer network trained apart (train.networks: [layers])
    sample_steps: Optional[int] = None  # DDIM steps; None: the model's own (its distillation stage's)
    out: Optional[str] = None  # zarr sample; default <run.dir>/samples/generated.zarr
    export: Optional[str] = None  # CaloChallenge HDF5 written by data_tools.export; default <sample>.hdf5
    export_dtype: Literal["float32", "float64"] = "float32"
    energies_from: Optional[str] = None  # HDF5 file or store: shower i gets its i-th incident energy
    energy_range: tuple[float, float] = (1_000.0, 1_000_000.0)  # MeV, log-uniform when energies_from is unset
    block_size: int = 4096  # showers per work block (a multiple of layout.shard_rows)
    batch_size: int = 0  # showers per forward pass; 0: a divisor of layout.shard_rows that fills the GPU (CPU: <= 64)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the networks with static shapes (the last batch is padded)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # reduce-overhead: CUDA graphs
    channels_last: bool = False  # U-Net convolutions on channels_last_3d activations (cuDNN; measure with gpu_check)
    cudnn_benchmark: bool = True  # let cuDNN pick the fastest convolution algorithms for the fixed shapes
    clip_x: bool = False  # clip each step's clean-sample estimate to the physical range of every bin (fraction 0..1)
    threshold_fractions: bool = False  # zero voxel fractions under threshold / E_layer before normalising each layer
    writer_threads: int = 2  # threads that copy, compress and write shards beside the networks; 0: serial
    layout: StoreLayout = field(default_factory=StoreLayout)

    def check(self, path: str) -> None:
        if self.n < 0:
            raise ConfigError(f"{path}.n: must be >= 0, got {self.n}")
        if self.n == 0 and self.energies_from is None:
            raise ConfigError(f"{path}.n: 0 (one shower per reference energy) needs {path}.energies_from")
        if self.seed < 0:
            raise ConfigError(f"{path}.seed: must be >= 0, got {self.seed}")
        if self.sample_steps is not None and self.sample_steps < 1:
            raise ConfigError(f"{path}.sample_steps: must be >= 1 (or null: the model's own), got {self.sample_steps}")
        lo, hi = self.energy_range
        if not 0 < lo <= hi:
            raise ConfigError(f"{path}.energy_range: expected 0 < min <= max (MeV), got {list(self.energy_range)}")
        if self.batch_size < 0:
            raise ConfigError(f"{path}.batch_size: must be >= 0 (0: automatic), got {self.batch_size}")
        if self.writer_threads < 0:
            raise ConfigError(f"{path}.writer_threads: must be >= 0 (0: write in the generating thread), got "
                              f"{self.writer_threads}")
        if self.block_size < 1 or self.block_size % self.layout.shard_rows:
            raise ConfigError(f"{path}.block_size: must be a positive multiple of {path}.layout.shard_rows "
                              f"({self.layout.shard_rows}), got {self.block_size}")
        if self.model.startswith("stage_") and not re.fullmatch(r"stage_\d+", self.model):
            raise ConfigError(f"{path}.model: expected final, teacher, stage_K (K a number) or a run directory, "
                              f"got {self.model!r}")


@dataclass
class EvaluateConfig:
    """CaloChallenge evaluation (``pipeline.evaluate``) of the generated sample against a reference."""

    reference: Optional[str] = None  # reference HDF5 file or store (Geant4: dataset_3_3/4.hdf5)
    reference_standin: Optional[StandinConfig] = None  # simulate the reference when it is missing
    out: Optional[str] = None  # report directory; default <run.dir>/evaluation
    classifiers: str = "low,high"  # comma list of low, high, or none
    classifier_protocol: str = "calochallenge"  # the challenge's classifier (default) or quick (smoke runs only)
    classifier_epochs: Optional[int] = None  # None: the protocol's (calochallenge 50, quick at most 20)
    extra_args: list[str] = field(default_factory=list)  # more pipeline.evaluate options, e.g. [--bins, "30"]

    def check(self, path: str) -> None:
        if self.classifier_protocol not in ("calochallenge", "quick"):
            raise ConfigError(f"{path}.classifier_protocol: expected calochallenge or quick, got "
                              f"{self.classifier_protocol!r}")
        if self.classifier_epochs is not None and self.classifier_epochs < 1:
            raise ConfigError(f"{path}.classifier_epochs: must be >= 1, got {self.classifier_epochs}")


@dataclass
class Config:
    """The whole pipeline's configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def check(self, path: str) -> None:
        steps, final = self.diffusion.sample_steps, self.distill.final_steps
        if final > steps or steps % final or (steps // final) & (steps // final - 1):
            raise ConfigError(f"distill.final_steps: {final} must be diffusion.sample_steps ({steps}) divided "
                              f"by a power of two")

    def per_rank_batch(self, world_size: int) -> int:
        """Per-rank batch size; the global batch must split evenly over the ranks."""
        if self.data.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size: {self.data.batch_size} does not divide evenly over {world_size} ranks"
            )
        return self.data.batch_size // world_size


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load and check a config file with ``KEY.PATH=VALUE`` overrides applied."""
    return loader.load(Config, path, overrides)


RESOLVED_CONFIG = "config.yaml"  # the resolved config every stage writes into its run directory


def save_resolved(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """Write the resolved config to ``<run dir>/config.yaml`` and return its path."""
    target = Path(run_dir or cfg.run.dir) / RESOLVED_CONFIG
    loader.save(cfg, target)
    return target
