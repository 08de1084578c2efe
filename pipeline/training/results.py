"""What the training loop hands back: one optimiser step (:class:`StepResult`) and a whole run
(:class:`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pipeline.runtime.exit_codes import EXIT_DONE, EXIT_NONFINITE, EXIT_REQUEUE


@dataclass(frozen=True)
class StepResult:
    """One optimiser step, as every rank agreed on it."""

    # (loss, layer, voxel): means over ranks and micro-batches, float64 on the CPU
    losses: torch.Tensor
    finite: bool  # False: nothing was applied (the run stops)
    stop: str | None  # "signal SIGUSR1", "time limit" (on any rank) or None
    checkpoint_due: bool  # train.checkpoint_every_minutes elapsed on some rank
    seconds: float


@dataclass
class TrainResult:
    """How a run ended: ``done``, ``stopped`` (signal or time limit) or ``nonfinite``."""

    status: Literal["done", "stopped", "nonfinite"]
    step: int
    run_dir: Path
    reason: str = ""

    @property
    def exit_code(self) -> int:
        return {"done": EXIT_DONE, "stopped": EXIT_REQUEUE,
                "nonfinite": EXIT_NONFINITE}[self.status]
