"""The voxel network as a 3D U-Net over (layer, angle, radius): it outputs the voxel diffusion's prediction
target (``diffusion.prediction``: v, or the clean sample x; the network does not know which).

Inputs per shower: the noisy voxels ``x`` (L, A, R), diffusion time ``t``, standardised log incident
energy ``cond`` and the (preprocessed) layer energies ``layers`` (L,). The network sees four input
channels: ``x``, the layer energy of each voxel's layer, and the normalised layer and radius indices
(no angle coordinate). Time, energy and the layer-energy vector are embedded, summed and drive every
block through FiLM / adaLN-Zero.

Resolution: each level halves L and R with stride 2 (``ceil(n / 2)``: 45 -> 23 -> 12 -> 6, 18 -> 9 -> 5 -> 3)
and halves A only while it is even and at most ``angle_downsample`` times (ds3: 50 -> 25 -> 25 ...).
Upsampling repeats and crops back to the skip's exact size, so any (L, A, R) works.

Equivariance: with circular angle padding, no angle coordinate and attention without angle position
encoding, ``model(roll(x, k, A)) == roll(model(x), k, A)`` holds exactly (up to float rounding) for
every shift ``k`` that is a multiple of :attr:`VoxelUNet.angle_factor` (2 for ds3 with one halving).

Precision: with ``fp32_first_last`` the stem (which reads the noisy input, where the last steps of a long
sampler move by less than bf16 resolves) and the output convolution run in float32 (not TF32) under bf16
autocast; the stem's output goes back to bf16, so the full-resolution activations and skips after it cost
what the rest of the network's do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pipeline.models.blocks import (
    CylConv3d,
    Downsample,
    ResBlock,
    ScalarEmbedding,
    Size3,
    TransformerBlock,
    Upsample,
    group_norm,
    in_fp32,
    zero_init,
)
from pipeline.models.presets import UNetSpec


class _Stage(nn.Module):
    """A residual block, optionally followed by a transformer block."""

    def __init__(self, res: ResBlock, attn: TransformerBlock | None) -> None:
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x, emb) if self.attn is not None else x


def level_sizes(shape: Size3, n_levels: int, angle_downsample: int) -> tuple[list[Size3], list[Size3]]:
    """Spatial size of every level and the stride (= upsampling factor) into each next level."""
    sizes, strides = [tuple(shape)], []
    halvings = 0
    for _ in range(n_levels - 1):
        L, A, R = sizes[-1]
        sa = 2 if (A % 2 == 0 and A > 1 and halvings < angle_downsample) else 1
        halvings += sa == 2
        stride = (2 if L > 1 else 1, sa, 2 if R > 1 else 1)
        strides.append(stride)
        sizes.append((math.ceil(L / stride[0]), A // sa, math.ceil(R / stride[2])))
    return sizes, strides  # type: ignore[return-value]


class VoxelUNet(nn.Module):
    """``forward(x (B,L,A,R), t (B,), cond (B,), layers (B,L)) -> v (B,L,A,R)``."""

    def __init__(self, shape: Size3, spec: UNetSpec, *, dropout: float = 0.0, angle_downsample: int = 1,
                 checkpointing: bool = False, fp32_first_last: bool = True, energy_max_freq: float = 100.0) -> None:
        super().__init__()
        self.shape, self.checkpointing, self.fp32_first_last = tuple(shape), checkpointing, fp32_first_last
        self.channels_last = False
        L, A, R = self.shape
        ch, emb_dim = spec.channels, spec.emb_dim
        self.sizes, strides = level_sizes(self.shape, len(ch), angle_downsample)
        self.angle_factor = math.prod(s[1] for s in strides)
        self.time_emb = ScalarEmbedding(emb_dim, max_freq=1000.0)
        self.energy_emb = ScalarEmbedding(emb_dim, max_freq=energy_max_freq)
        self.layer_emb = nn.Sequential(nn.Linear(L, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        def axis(n: int) -> torch.Tensor:  # -1 .. 1 by exact float64 arithmetic: the same bits on every CPU and GPU
            return (torch.arange(n, dtype=torch.float64) * 2 / max(n - 1, 1) - 1).float()  # (linspace's are not)

        coords = torch.stack(torch.meshgrid(axis(L), axis(R), indexing="ij"))
        self.register_buffer("coords", coords[None, :, :, None, :], persistent=False)  # (1, 2, L, 1, R)
        self.stem = CylConv3d(4, ch[0])

        def stage(cin: int, cout: int, level: int) -> _Stage:
            attn = level in spec.attention_levels
            return _Stage(ResBlock(cin, cout, emb_dim, dropout),
                          TransformerBlock(cout, spec.head_dim, emb_dim, spec.mlp_ratio, dropout) if attn else None)

        self.down = nn.ModuleList()
        skip_ch = [ch[0]]
        for level, c in enumerate(ch):
            cin = skip_ch[-1]
            for _ in range(spec.blocks):
                self.down.append(stage(cin, c, level))
                cin = c
                skip_ch.append(c)
            if level < len(ch) - 1:
                self.down.append(Downsample(c, c, strides[level]))
                skip_ch.append(c)
        top = ch[-1]
        self.mid = nn.ModuleList([
            ResBlock(top, top, emb_dim, dropout), TransformerBlock(top, spec.head_dim, emb_dim, spec.mlp_ratio, dropout),
            ResBlock(top, top, emb_dim, dropout)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleDict()
        cin = top
        for level in reversed(range(len(ch))):
            for _ in range(spec.blocks + 1):
                self.up.append(stage(cin + skip_ch.pop(), ch[level], level))
                cin = ch[level]
            if level > 0:
                self.upsample[str(len(self.up) - 1)] = Upsample(ch[level], strides[level - 1])
        self.out_norm, self.out = group_norm(ch[0]), zero_init(CylConv3d(ch[0], 1))

    def use_channels_last(self, enabled: bool = True) -> "VoxelUNet":
        """Run the convolutions on channels_last_3d activations (cuDNN then picks its channels-last kernels; same
        results). The weights keep their layout: DeepSpeed views parameters as contiguous bytes."""
        self.channels_last = enabled
        return self

    def _call(self, block: nn.Module, *args: object) -> Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, layers: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"voxel input of shape {tuple(x.shape)} does not match the model's {self.shape}")
        b, (L, A, R) = x.shape[0], self.shape
        emb = F.silu(self.time_emb(t) + self.energy_emb(cond) + self.layer_emb(layers.to(x.dtype)))
        h = torch.cat([x[:, None], layers.to(x.dtype)[:, None, :, None, None].expand(b, 1, L, A, R),
                       self.coords.to(x.dtype).expand(b, 2, L, A, R)], dim=1)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last_3d)
        h = in_fp32(self.stem, h, back_to_autocast=True) if self.fp32_first_last else self.stem(h)
        skips = [h]
        for block in self.down:
            h = self._call(block, h, emb)
            skips.append(h)
        for block in self.mid:
            h = self._call(block, h, emb)
        for i, block in enumerate(self.up):
            h = self._call(block, torch.cat([h, skips.pop()], dim=1), emb)
            if str(i) in self.upsample:
                h = self._call(self.upsample[str(i)], h, tuple(skips[-1].shape[2:]))
        h = F.silu(self.out_norm(h))
        return (in_fp32(self.out, h) if self.fp32_first_last else self.out(h))[:, 0]
