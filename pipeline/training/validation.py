"""The validation loss: the trained weights and their EMA on the store's validation split, with the
same noise."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from pipeline.physics.preprocessing import Preprocessed
from pipeline.runtime.precision import autocast


@torch.no_grad()
def validation_sums(model: torch.nn.Module, ema_model: torch.nn.Module,
                    batches: Iterator[dict[str, torch.Tensor]], n: int,
                    preprocess: Callable[[dict[str, torch.Tensor], torch.Generator], Preprocessed],
                    generator: torch.Generator, precision: str,
                    device: torch.device) -> torch.Tensor:
    """(loss, layer, voxel, EMA loss) summed over ``n`` batches (float64, CPU); the EMA sees the
    trained weights' noise draw. ``model`` is back in training mode afterwards and ``batches``
    closed."""
    sums = torch.zeros(4, dtype=torch.float64)
    model.eval()
    try:
        for _ in range(n):
            p = preprocess(next(batches), generator)
            state = generator.get_state()
            with autocast(precision, device):
                out = model(p.layers, p.voxels, p.cond, generator=generator)
                generator.set_state(state)
                ema_loss = ema_model(p.layers, p.voxels, p.cond, generator=generator)["loss"]
            sums += torch.stack([out["loss"], out["layer"], out["voxel"], ema_loss]).double().cpu()
    finally:
        batches.close()  # type: ignore[attr-defined]
        model.train()
    return sums
