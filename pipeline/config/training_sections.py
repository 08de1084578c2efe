"""Config sections of training and distillation: the optimiser both share, each one's schedule.

``optim`` (AdamW and the shape of its learning-rate curve) is one section used by training and by every
distillation stage; ``train`` and ``distill`` are both a :class:`StageSchedule` (length, peak learning
rate, warm-up, EMA decay) with their own defaults, so a distillation stage's training config is
``train`` with the four schedule fields of ``distill`` (:func:`StageSchedule.schedule`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pipeline.config.loader import ConfigError, check_at_least


@dataclass
class OptimConfig:
    """AdamW and the shape of the learning-rate curve, for training and every distillation stage."""

    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.01  # decoupled; matrices and convolution kernels only
    grad_clip: float = 1.0  # global gradient-norm clipping; 0 disables it
    min_lr_ratio: float = 0.05  # cosine decay from the peak lr to lr * min_lr_ratio at max_steps
    fused: bool = True  # fused AdamW kernel on GPU (one launch for all tensors; ignored on CPU)

    def check(self, path: str) -> None:
        check_at_least(self, path, 0, ("weight_decay", "grad_clip"))
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{path}.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{path}.betas: expected two numbers in [0, 1), got {list(self.betas)}")
        if not self.eps > 0:
            raise ConfigError(f"{path}.eps: must be > 0, got {self.eps}")


@dataclass
class StageSchedule:
    """The schedule of one training stage (training itself, or one distillation stage)."""

    max_steps: int = 100_000  # optimiser steps: the run's length and the cosine's (``--max-steps`` overrides)
    lr: float = 2e-4  # peak learning rate
    warmup_steps: int = 1000  # linear warm-up from lr / warmup_steps to lr
    ema_decay: float = 0.9999  # EMA of the weights (fp32), once per optimiser step, warmed up as (1+n)/(10+n)

    def check_schedule(self, path: str) -> None:
        check_at_least(self, path, 1, ("max_steps",))
        check_at_least(self, path, 0, ("warmup_steps",))
        if not self.lr > 0:
            raise ConfigError(f"{path}.lr: must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"{path}.ema_decay: must be in [0, 1), got {self.ema_decay}")

    def schedule(self) -> dict[str, Any]:
        """The schedule fields alone (to put one stage's schedule into another section)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(StageSchedule)}


@dataclass
class ValidationConfig:
    """The diffusion loss on the store's validation split during training."""

    every_steps: int = 1000  # 0: off
    per_rank_batches: int = 16  # batches of data.global_batch_size / ranks, per rank, per validation

    def check(self, path: str) -> None:
        check_at_least(self, path, 0, ("every_steps",))
        check_at_least(self, path, 1, ("per_rank_batches",))


@dataclass
class MonitorConfig:
    """The fidelity monitor (``pipeline.training.monitor``): generated showers against validation ones."""

    every_steps: int = 0  # every N steps, at step 0 of a fresh run and at the end; 0: off
    showers: int = 512  # showers it generates and compares with validation showers of the same energies
    sample_steps: int = 0  # its DDIM steps; 0: the run's sampling.steps
    bins: int = 20  # histogram bins of its separation powers

    def check(self, path: str) -> None:
        check_at_least(self, path, 0, ("every_steps", "sample_steps"))
        check_at_least(self, path, 2, ("showers", "bins"))


@dataclass
class TrainConfig(StageSchedule):
    """What ``pipeline.train`` trains and how it checkpoints, validates and logs (steps: optimiser steps)."""

    networks: list[Literal["layers", "voxels"]] = field(default_factory=lambda: ["layers", "voxels"])
    grad_accum: int = 1  # micro-batches per optimiser step (batch per step = global_batch_size * this)
    zero_stage: Literal[1, 2] = 2  # DeepSpeed ZeRO stage
    checkpoint_every_steps: int = 1000  # 0: off
    checkpoint_every_minutes: float = 30.0  # 0: off
    keep_checkpoints: int = 2  # newest checkpoints kept in <run.dir>/checkpoints
    log_every_steps: int = 50  # CSV / TensorBoard rows (averaged over the interval)
    init_from: Optional[str] = None  # checkpoint tag directory to take weights and EMA from (fresh optimiser)
    collective_timeout_minutes: float = 5.0  # a rank stuck this long in a collective ends the run
    dequantize_empty: bool = False  # empty voxels as random fractions below the readout threshold
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def check(self, path: str) -> None:
        self.check_schedule(path)
        if not self.networks or len(set(self.networks)) != len(self.networks):
            raise ConfigError(f"{path}.networks: list layers, voxels or both, each once; got {self.networks}")
        check_at_least(self, path, 1, ("grad_accum", "keep_checkpoints", "log_every_steps"))
        check_at_least(self, path, 0, ("checkpoint_every_steps", "checkpoint_every_minutes"))
        if not self.collective_timeout_minutes > 0:
            raise ConfigError(f"{path}.collective_timeout_minutes: must be > 0, got "
                              f"{self.collective_timeout_minutes}")


@dataclass
class DistillConfig(StageSchedule):
    """Progressive distillation (``pipeline.distill``): stage k halves the sampling steps of stage k - 1.

    Stage 0 is the trained model with ``sampling.steps``; stages run until ``final_steps``. Each stage
    trains with this section's schedule; everything else (batch, ZeRO, checkpoints, validation, logging)
    comes from ``train`` and the optimiser from ``optim``.
    """

    max_steps: int = 20_000  # optimiser steps per stage
    lr: float = 5e-5
    warmup_steps: int = 200
    ema_decay: float = 0.999
    final_steps: int = 8  # DDIM steps of the last stage's student

    def check(self, path: str) -> None:
        self.check_schedule(path)
        check_at_least(self, path, 1, ("final_steps",))

    def student_steps(self, sample_steps: int) -> list[int]:
        """Sampling steps of stages 1..K: ``sample_steps / 2, / 4, ..., final_steps``."""
        steps, out = sample_steps, []
        while steps > self.final_steps:
            steps //= 2
            out.append(steps)
        return out
