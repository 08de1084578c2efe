"""Parameter counts and FLOPs per shower per network evaluation of a config's models.

    python -m pipeline.info --config configs/ds3.yaml [--set model.preset=base] [--set model.backbone=transformer]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one shower on the meta device
(nothing is allocated or computed): matmuls, convolutions and attention, counted as 2 per multiply-add;
normalisations and activations are not counted. A training step costs about 3x a forward evaluation
(4x with activation checkpointing).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import Config, load_config
from pipeline.config.loader import ConfigError, add_config_arguments
from pipeline.models import build_models, count_parameters
from pipeline.physics.geometry import load_geometry


def forward_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward call."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*inputs)
    return int(counter.get_total_flops())


def model_info(cfg: Config) -> dict[str, dict[str, int]]:
    """``{"layer_net": {"parameters", "flops"}, "voxel_net": {...}}`` per shower per evaluation (``voxel_net``
    is the voxel network of either backbone, named as in the weights files)."""
    geometry = load_geometry(cfg.data.geometry)
    with torch.device("meta"):
        layer_net, voxel_net = build_models(cfg.model, geometry)
        layer_net.eval()
        voxel_net.eval()
        L = geometry.shape[0]
        x, t, cond, layers = torch.zeros(1, *geometry.shape), torch.zeros(1), torch.zeros(1), torch.zeros(1, L)
        return {
            "layer_net": {"parameters": count_parameters(layer_net), "flops": forward_flops(layer_net, layers, t, cond)},
            "voxel_net": {"parameters": count_parameters(voxel_net), "flops": forward_flops(voxel_net, x, t, cond, layers)},
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.info", description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = model_info(cfg)
    shape = "x".join(str(n) for n in load_geometry(cfg.data.geometry).shape)
    m = cfg.model
    print(f"preset {m.preset}, geometry {cfg.data.geometry} ({shape}), voxel backbone {m.backbone}, "
          f"activation checkpointing {'on' if m.checkpointing else 'off'}")
    for name, d in info.items():
        print(f"  {name:11s} {d['parameters']:>13,d} parameters  {d['flops'] / 1e9:>12.6g} GFLOP per shower per evaluation")
    total = sum(d["parameters"] for d in info.values())
    print(f"  {'total':11s} {total:>13,d} parameters")
    return 0
