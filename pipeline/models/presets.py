"""Architecture presets: ``tiny`` (CPU tests), ``base`` (~15M U-Net, CaloScore-v2 sized), ``large`` (>100M, ds3),
for each voxel backbone (``model.backbone``: the U-Net or the patch transformer).

U-Net parameters sit mostly at the coarse levels, where they cost few FLOPs; the full-resolution level
(40500 voxels on ds3) stays narrow. The transformer's cost is set by its token count (the patch size,
:data:`PATCHES` per geometry or ``model.patch``), width and depth. ``python -m pipeline.info`` prints
parameters and FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetSpec:
    """The voxel U-Net: channels per level (level 0 is full resolution), residual blocks per level
    (one more on the way up), levels whose residual blocks are followed by a transformer block (the
    middle always has one), attention head width (a multiple of 8 for flash attention), width of
    the conditioning embedding, MLP expansion of the transformer blocks."""

    channels: tuple[int, ...]
    blocks: int
    attention_levels: tuple[int, ...]
    head_dim: int
    emb_dim: int
    mlp_ratio: int = 4


@dataclass(frozen=True)
class LayerNetSpec:
    """The layer-energy residual MLP: hidden width, residual blocks, embedding width."""

    width: int
    depth: int
    emb_dim: int


@dataclass(frozen=True)
class TransformerSpec:
    """The patch transformer: token width, blocks, attention head width, MLP expansion, conditioning width."""

    width: int
    depth: int
    head_dim: int
    emb_dim: int
    mlp_ratio: int = 4


@dataclass(frozen=True)
class Preset:
    unet: UNetSpec
    layer_net: LayerNetSpec
    transformer: TransformerSpec


#: default transformer patch (layers, angle bins, radial bins) per geometry: ds3 -> 9 x 5 x 6 = 270 tokens,
#: ds2 (45 x 16 x 9) -> 9 x 4 x 3 = 108 tokens
PATCHES: dict[str, tuple[int, int, int]] = {"ds3": (5, 10, 3), "ds2": (5, 4, 3)}


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        UNetSpec(channels=(8, 16, 32), blocks=1, attention_levels=(2,), head_dim=16, emb_dim=64, mlp_ratio=2),
        LayerNetSpec(width=64, depth=2, emb_dim=64),
        TransformerSpec(width=128, depth=2, head_dim=32, emb_dim=64, mlp_ratio=2),
    ),
    "base": Preset(
        UNetSpec(channels=(32, 64, 96, 96), blocks=2, attention_levels=(2, 3), head_dim=32, emb_dim=256),
        LayerNetSpec(width=256, depth=3, emb_dim=256),
        TransformerSpec(width=512, depth=12, head_dim=64, emb_dim=512),
    ),
    "large": Preset(
        UNetSpec(channels=(64, 128, 256, 320), blocks=2, attention_levels=(2, 3), head_dim=64, emb_dim=512),
        LayerNetSpec(width=512, depth=6, emb_dim=512),
        TransformerSpec(width=768, depth=16, head_dim=64, emb_dim=768),
    ),
}
