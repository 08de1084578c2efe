"""The patch-transformer voxel network: a DiT over 3D patches of (layer, angle, radius), predicting the same
target as :class:`pipeline.models.unet.VoxelUNet` with the same call signature.

``forward(x (B,L,A,R), t (B,), cond (B,), layers (B,L)) -> (B,L,A,R)``.

- Tokens: the grid (with the layer-energy channel beside the voxels, as in the U-Net) is zero-padded along L
  and R to whole patches and cut into ``patch = (pL, pA, pR)`` patches (pA must divide A), each projected
  to ``width`` by one strided convolution: ``ceil(L/pL) x A/pA x ceil(R/pR)`` tokens (ds3 with 5 x 10 x 3: 270).
- Position: learned embeddings of the layer and radius patch index are added to the tokens; the angle enters
  only through rotary embeddings of the queries and keys with frequencies that are whole multiples of
  ``2 pi / (A / pA)``, so attention depends on the angular distance modulo the circumference. Rolling the input
  by a multiple of pA therefore rolls the output by the same amount (exactly, up to float rounding).
- Conditioning: diffusion time, log E_inc and the layer-energy vector are embedded and summed into one vector
  that drives adaLN-Zero (shift, scale, gate) in every block; each token also gets an embedding of the
  energies of its own pL layers ("a patch knows its layer's energy").
- ``F.scaled_dot_product_attention``; widths multiples of 64 in the presets; optional activation
  checkpointing per block; with ``fp32_first_last`` the patch projection and the output projection run in
  fp32 under bf16 autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pipeline.models.blocks import DiTBlock, ScalarEmbedding, Size3, in_fp32, zero_init
from pipeline.models.presets import TransformerSpec


def angle_rotary(n_angle: int, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos/sin ``(n_angle, head_dim / 2)`` of rotary angles ``2 pi k a / n_angle``, k = 1 .. head_dim / 2 (periodic)."""
    k = torch.arange(1, head_dim // 2 + 1, dtype=torch.float64)
    a = torch.arange(n_angle, dtype=torch.float64)
    phase = 2 * math.pi * torch.outer(a, k) / n_angle
    return torch.cos(phase).float(), torch.sin(phase).float()


class VoxelTransformer(nn.Module):
    """``forward(x (B,L,A,R), t (B,), cond (B,), layers (B,L)) -> (B,L,A,R)`` (see the module doc)."""

    def __init__(self, shape: Size3, spec: TransformerSpec, patch: Size3, *, dropout: float = 0.0,
                 checkpointing: bool = False, fp32_first_last: bool = True, energy_max_freq: float = 100.0) -> None:
        super().__init__()
        self.shape, self.patch = tuple(shape), tuple(patch)
        L, A, R = self.shape
        pL, pA, pR = self.patch
        if A % pA:
            raise ValueError(f"model.patch: the angle patch {pA} must divide the {A} angular bins")
        self.grid = (math.ceil(L / pL), A // pA, math.ceil(R / pR))
        self.checkpointing, self.fp32_first_last = checkpointing, fp32_first_last
        self.angle_factor = pA  # rolls by multiples of this commute with the network
        width, emb_dim = spec.width, spec.emb_dim
        self.time_emb = ScalarEmbedding(emb_dim, max_freq=1000.0)
        self.energy_emb = ScalarEmbedding(emb_dim, max_freq=energy_max_freq)
        self.layer_emb = nn.Sequential(nn.Linear(L, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.embed = nn.Conv3d(2, width, kernel_size=self.patch, stride=self.patch)
        self.token_layer_energy = nn.Linear(pL, width)  # the energies of a token's own layers
        nL, nA, nR = self.grid
        self.pos_layer = nn.Parameter(torch.randn(nL, width) * 0.02)
        self.pos_radius = nn.Parameter(torch.randn(nR, width) * 0.02)
        cos, sin = angle_rotary(nA, spec.head_dim)
        angle_of_token = torch.arange(nA).reshape(1, nA, 1).expand(nL, nA, nR).flatten()
        self.register_buffer("rot_cos", cos[angle_of_token], persistent=False)
        self.register_buffer("rot_sin", sin[angle_of_token], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(width, spec.head_dim, emb_dim, spec.mlp_ratio, dropout)
                                    for _ in range(spec.depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = zero_init(nn.Linear(emb_dim, 2 * width))
        self.out = zero_init(nn.Linear(width, pL * pA * pR))

    def _tokens(self, x: Tensor, layers: Tensor) -> Tensor:
        b, (L, _, R), (pL, _, pR) = x.shape[0], self.shape, self.patch
        nL, nA, nR = self.grid
        h = torch.stack([x, layers[:, :, None, None].expand_as(x)], dim=1)
        h = F.pad(h, (0, nR * pR - R, 0, 0, 0, nL * pL - L))
        tokens = self.embed(h).flatten(2).transpose(1, 2)  # (B, nL * nA * nR, width), layer-major
        own = F.pad(layers, (0, nL * pL - L)).reshape(b, nL, pL)
        per_layer = self.token_layer_energy(own) + self.pos_layer  # (B, nL, width)
        position = per_layer[:, :, None, None] + self.pos_radius[None, None, None]  # (B, nL, 1, nR, width)
        return tokens + position.expand(b, nL, nA, nR, -1).flatten(1, 3)

    def _untokens(self, tokens: Tensor) -> Tensor:
        (L, _, R), (pL, pA, pR), (nL, nA, nR) = self.shape, self.patch, self.grid
        b = tokens.shape[0]
        out = tokens.reshape(b, nL, nA, nR, pL, pA, pR).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, nL * pL, nA * pA, nR * pR)[:, :L, :, :R]

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, layers: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"voxel input of shape {tuple(x.shape)} does not match the model's {self.shape}")
        layers = layers.to(x.dtype)
        emb = F.silu(self.time_emb(t) + self.energy_emb(cond) + self.layer_emb(layers))
        tokens = in_fp32(self._tokens, x, layers) if self.fp32_first_last else self._tokens(x, layers)
        for block in self.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, emb, (self.rot_cos, self.rot_sin), use_reentrant=False)
            else:
                tokens = block(tokens, emb, (self.rot_cos, self.rot_sin))
        shift, scale = self.out_modulation(emb)[:, None].chunk(2, dim=-1)
        h = self.out_norm(tokens) * (1 + scale) + shift
        out = in_fp32(self.out, h) if self.fp32_first_last else self.out(h)
        return self._untokens(out)
