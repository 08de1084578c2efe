"""Exponential moving average of the weights (fp32), updated once per optimiser step.

``ema <- ema + (1 - d) (w - ema)``, ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the usual
warm-up, so early averages are not dominated by the random initialisation). Buffers are copied. Frozen
parameters (a network this run does not train, ``train.networks``) are skipped: their average is themselves.
:func:`export_ema` writes the EMA weights on their own (:mod:`pipeline.models.ema_weights`) for
distillation and generation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from pipeline.models.ema_weights import save_ema_weights


class EMA:
    """fp32 exponential moving average of a module's parameters (see module doc)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One update from the trained ``model`` (same architecture as the copy)."""
        weight = 1.0 - self.current_decay()
        ema_all, all_params = list(self.module.parameters()), list(model.parameters())
        if len(ema_all) != len(all_params):
            raise ValueError(f"EMA of {len(ema_all)} tensors updated from a model with {len(all_params)}")
        pairs = [(e, p.detach()) for e, p in zip(ema_all, all_params) if p.requires_grad]
        ema_params, params = [e for e, _ in pairs], [p for _, p in pairs]
        if any(p.dtype != e.dtype for p, e in zip(params, ema_params)):
            params = [p.to(e.dtype) for p, e in zip(params, ema_params)]
        torch._foreach_lerp_(ema_params, params, weight)  # one fused update instead of a launch per tensor
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Tensor], updates: int) -> None:
        self.module.load_state_dict(state, strict=True)
        self.updates = int(updates)


def export_ema(ema: EMA, path: str | Path, metadata: Mapping[str, object]) -> Path:
    """Write the EMA weights on their own (keys ``layer_net.*``, ``voxel_net.*``) with JSON metadata."""
    return save_ema_weights(path, ema.state_dict(), ema.updates, metadata)
