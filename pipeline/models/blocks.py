"""Building blocks of the voxel U-Net over (layer, angle, radius) and of the layer-energy network.

Every convolution pads the angle circularly (the cylinder has no seam) and layers/radius with zeros.
No block has a parameter or a position encoding that depends on the angular index, so every block
commutes with ``torch.roll`` along the angle, except the stride-2 angular downsampling, which commutes
with rolls by even shifts (and maps them to half the shift).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Size3 = tuple[int, int, int]


def fourier_features(x: Tensor, dim: int, max_freq: float = 1000.0) -> Tensor:
    """``(B,)`` scalars -> ``(B, dim)`` sin/cos features at log-spaced frequencies ``pi * [1, max_freq]``.

    Computed in float64 and returned in at least float32: arguments reach ``pi * max_freq`` (3142 for time),
    where float32 ``sin`` implementations disagree by up to 5e-4 (torch's vectorised and scalar CPU kernels,
    measured; GPUs differ again), which made the same model give different showers on different CPUs.
    """
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half, device=x.device, dtype=torch.float64)) * math.pi
    arg = x.to(torch.float64).reshape(-1, 1) * freqs
    features = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return features.to(torch.promote_types(x.dtype, torch.float32))  # at least float32, even under bf16


class ScalarEmbedding(nn.Module):
    """Fourier features of a scalar (diffusion time, standardised log energy) through a small MLP."""

    def __init__(self, emb_dim: int, max_freq: float = 1000.0, n_features: int = 64) -> None:
        super().__init__()
        self.n_features, self.max_freq = n_features, max_freq
        self.mlp = nn.Sequential(nn.Linear(n_features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, x: Tensor) -> Tensor:
        features = fourier_features(x, self.n_features, self.max_freq)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


@contextmanager
def no_tf32() -> Iterator[None]:
    """Float32 convolutions and matrix products in full float32: cuDNN and cuBLAS would otherwise round their
    inputs to TF32 (10-bit mantissa) on Ampere and later GPUs, which is what :func:`in_fp32` is there to avoid."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def in_fp32(fn: Callable[..., Tensor], *inputs: Tensor, back_to_autocast: bool = False) -> Tensor:
    """``fn(*inputs)`` in float32 (not TF32) even inside a bf16/fp16 autocast region, for precision-critical
    layers; ``back_to_autocast`` casts the result to the autocast dtype, so that what follows (e.g. the U-Net's
    full-resolution activations and skips) runs at the autocast precision."""
    device = inputs[0].device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):  # e.g. "meta" in pipeline.info
        return fn(*inputs)
    dtype = torch.get_autocast_dtype(device)
    with torch.autocast(device, enabled=False), no_tf32():
        out = fn(*(x.float() for x in inputs))
    return out.to(dtype) if back_to_autocast else out


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (per sample: batch-size independent)."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-5)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class CylConv3d(nn.Module):
    """3D convolution on ``(B, C, L, A, R)``: circular padding along A, zero padding along L and R."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: Size3 = (1, 1, 1)) -> None:
        super().__init__()
        self.pad = kernel // 2
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(self.pad, 0, self.pad))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(pad_angle(x, self.pad) if self.pad else x)


def pad_angle(x: Tensor, p: int) -> Tensor:
    """``(B, C, L, A, R)`` -> ``(B, C, L, A + 2p, R)``, wrapped around the angle, in ``x``'s memory format
    (channels_last_3d stays channels_last_3d). One allocation and three copies: 22 % faster than
    concatenating the wrapped slices, as fast as ``F.pad(mode="circular")``, which returns contiguous tensors."""
    b, c, L, A, R = x.shape
    channels_last = c > 1 and x.is_contiguous(memory_format=torch.channels_last_3d)
    out = torch.empty((b, c, L, A + 2 * p, R), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    out[:, :, :, p:A + p] = x
    out[:, :, :, :p] = x[:, :, :, A - p:]
    out[:, :, :, A + p:] = x[:, :, :, :p]
    return out


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with FiLM (adaptive scale/shift from the embedding) after the 2nd norm."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), CylConv3d(cin, cout)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.drop = group_norm(cout), nn.Dropout(dropout)
        self.conv2 = zero_init(CylConv3d(cout, cout))
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply rotary embeddings to ``x`` (B, heads, N, head_dim) with per-token ``cos``/``sin`` (N, head_dim / 2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


class DiTBlock(nn.Module):
    """Pre-norm self-attention and MLP over tokens ``(B, N, C)``, both modulated and gated by adaLN-Zero (DiT);
    with ``rotary = (cos, sin)`` the queries and keys are rotated (relative positions)."""

    def __init__(self, channels: int, head_dim: int, emb_dim: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if channels % head_dim or head_dim % 2:
            raise ValueError(f"{channels} channels do not split into heads of even size {head_dim}")
        self.heads = channels // head_dim
        self.norm1 = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(approximate="tanh"),
                                 nn.Dropout(dropout), nn.Linear(mlp_ratio * channels, channels))
        self.modulation = zero_init(nn.Linear(emb_dim, 6 * channels))

    def forward(self, tokens: Tensor, emb: Tensor, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, n, c = tokens.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(emb)[:, None].chunk(6, dim=-1)
        h = self.norm1(tokens) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        tokens = tokens + gate1 * self.proj(attn)
        return tokens + gate2 * self.mlp(self.norm2(tokens) * (1 + scale2) + shift2)


class TransformerBlock(DiTBlock):
    """A :class:`DiTBlock` over all (L, A, R) positions of a ``(B, C, L, A, R)`` grid (the U-Net's coarse levels).

    No position encoding: the features carry position from the convolutions (zero padding along
    L and R and the coordinate input channels), so attention stays equivariant to angular rolls.
    """

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        b, c, *spatial = x.shape
        tokens = super().forward(x.flatten(2).transpose(1, 2), emb)
        return tokens.transpose(1, 2).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Stride-2 convolution along the chosen axes; a size n becomes ceil(n / 2)."""

    def __init__(self, cin: int, cout: int, stride: Size3) -> None:
        super().__init__()
        self.conv = CylConv3d(cin, cout, stride=stride)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour repeat by the matching stride, cropped to the finer level's size, then a conv.

    Fine index i reads coarse index i // 2, the inverse of the downsampling's centre map 2j -> j.
    """

    def __init__(self, channels: int, factor: Size3) -> None:
        super().__init__()
        self.factor = factor
        self.conv = CylConv3d(channels, channels)

    def forward(self, x: Tensor, size: Size3) -> Tensor:
        if max(self.factor) > 1:
            x = F.interpolate(x, scale_factor=tuple(float(f) for f in self.factor), mode="nearest")
        return self.conv(x[:, :, : size[0], : size[1], : size[2]])
