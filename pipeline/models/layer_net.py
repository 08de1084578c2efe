"""The layer-energy network: a residual MLP over the L preprocessed layer energies.

``forward(x (B, L), t (B,), cond (B,)) -> v (B, L)``; time and standardised log incident energy are
embedded and modulate every block (adaptive LayerNorm scale/shift, zero-initialised residual branch).
With ``fp32`` (``model.fp32_first_last``) it runs in float32 even under bf16 autocast: it is small, and
45 layer energies need more than bf16's 8 bits of mantissa.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.blocks import ScalarEmbedding, in_fp32, zero_init
from pipeline.models.presets import LayerNetSpec


class _ResMLPBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.fc1, self.drop = nn.Linear(width, 2 * width), nn.Dropout(dropout)
        self.fc2 = zero_init(nn.Linear(2 * width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        y = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.drop(F.silu(self.fc1(y))))


class LayerEnergyNet(nn.Module):
    """Residual MLP predicting v for the layer-energy diffusion."""

    def __init__(self, n_layers: int, spec: LayerNetSpec, *, dropout: float = 0.0, fp32: bool = True,
                 energy_max_freq: float = 100.0) -> None:
        super().__init__()
        self.n_layers, self.fp32 = n_layers, fp32
        self.time_emb = ScalarEmbedding(spec.emb_dim, max_freq=1000.0)
        self.energy_emb = ScalarEmbedding(spec.emb_dim, max_freq=energy_max_freq)
        self.inp = nn.Linear(n_layers, spec.width)
        self.blocks = nn.ModuleList(_ResMLPBlock(spec.width, spec.emb_dim, dropout) for _ in range(spec.depth))
        self.out_norm = nn.LayerNorm(spec.width)
        self.out = zero_init(nn.Linear(spec.width, n_layers))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if x.shape[1:] != (self.n_layers,):
            raise ValueError(f"layer input of shape {tuple(x.shape)} does not match the model's {self.n_layers} layers")
        return in_fp32(self._forward, x, t, cond) if self.fp32 else self._forward(x, t, cond)

    def _forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        emb = F.silu(self.time_emb(t) + self.energy_emb(cond))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))
