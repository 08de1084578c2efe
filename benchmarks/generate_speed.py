"""Generation speed: ms per shower of pipeline.generate's sampler for each number of DDIM steps.

    .venv/bin/python benchmarks/generate_speed.py [--geometry ds3] [--presets tiny base] [--steps 1 2 4 8]
                                                  [--batch 64] [--repeats 2] [--precision auto] [--compile]

Times the whole per-batch path of ``pipeline.generate`` (per-shower noise, layer-energy sampler, voxel
sampler, inverse preprocessing with energy conservation and threshold; results copied to host memory)
with random weights (speed does not depend on training) and preprocessing statistics from a small
stand-in store. One step count is one distillation stage: 8 steps is the project's target sampler.
Undistilled teachers (64-256 steps) cost fixed + steps x per-step, extrapolated from a linear fit of the
measured step counts (marked "fit"). On CUDA the networks run in bf16 autocast (``--precision auto``),
optionally under ``torch.compile``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_tools.convert import convert
from data_tools.simulate import simulate_file
from pipeline.config import Config, ModelConfig, StoreLayout
from pipeline.data.shower_store import ShowerStore
from pipeline.diffusion import CosineSchedule, NetworkSampling, NoiseSource, shower_seed
from pipeline.generation.sampler import Sampler
from pipeline.models import build_models
from pipeline.physics.preprocessing import Preprocessor
from pipeline.runtime.precision import autocast, resolve_precision
from pipeline.tools.info import model_info


def stats_store(geometry: str, tmp: Path) -> ShowerStore:
    simulate_file(tmp / "standin.hdf5", geometry, 256, seed=1, workers=1)
    return ShowerStore(convert([tmp / "standin.hdf5"], tmp / "store.zarr", geometry, layout=StoreLayout(32, 256),
                               validation_fraction=0.0, progress=False))


def sampler_for(store: ShowerStore, preset: str, steps: int, device: torch.device, compile: bool) -> Sampler:
    torch.manual_seed(0)
    layer_net, unet = build_models(ModelConfig(preset=preset), store.geometry)  # type: ignore[arg-type]
    layer_net, unet = layer_net.to(device).eval(), unet.to(device).eval()
    if compile:
        layer_net, unet = torch.compile(layer_net, dynamic=False), torch.compile(unet, dynamic=False)
    return Sampler(NetworkSampling(layer_net, steps), NetworkSampling(unet, steps),
                   Preprocessor(store.stats, store.geometry).to(device), CosineSchedule(), 0.0, store.geometry, {})


def time_batches(sampler: Sampler, batch: int, repeats: int, precision: str, device: torch.device) -> float:
    """Best seconds per batch over ``repeats`` timed batches (after one warm-up batch)."""
    energies = torch.from_numpy(np.geomspace(1e3, 1e6, batch))
    times = []
    for r in range(repeats + 1):
        seeds = [shower_seed(r, i) for i in range(batch)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(precision, device):
            sampler(energies, seeds).float().cpu()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def noise_ms_per_shower(shape: tuple[int, ...], n: int = 64) -> float:
    """Drawing one shower's initial voxel noise on the CPU (part of every measurement above)."""
    t0 = time.perf_counter()
    NoiseSource([shower_seed(0, i) for i in range(n)])(shape, 0, "voxels")
    return 1e3 * (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--geometry", default="ds3")
    p.add_argument("--presets", nargs="+", default=["tiny", "base"])
    p.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--extrapolate", nargs="+", type=int, default=[64, 256], help="teacher step counts to fit")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    with tempfile.TemporaryDirectory() as tmp:
        store = stats_store(args.geometry, Path(tmp))
        print(f"{args.geometry}, {name}, {precision}, batch {args.batch}{', torch.compile' if args.compile else ''}; "
              f"noise {noise_ms_per_shower(store.geometry.shape):.2f} ms per shower\n")
        print("| preset | params | GFLOP per shower-step | steps | ms per shower | showers/s |")
        print("|---|---|---|---|---|---|")
        for preset in args.presets:
            cfg = Config()
            cfg.data.geometry, cfg.model.preset = args.geometry, preset
            nets = model_info(cfg).values()
            params, gflop = sum(n["parameters"] for n in nets) / 1e6, sum(n["flops"] for n in nets) / 1e9
            measured = {}
            for steps in args.steps:
                seconds = time_batches(sampler_for(store, preset, steps, device, args.compile), args.batch,
                                       args.repeats, precision, device)
                measured[steps] = 1e3 * seconds / args.batch
                print(f"| {preset} | {params:.1f} M | {gflop:.2f} | {steps} | {measured[steps]:.1f} | "
                      f"{1e3 / measured[steps]:.1f} |", flush=True)
            if len(measured) >= 2:
                slope, fixed = np.polyfit(list(measured), list(measured.values()), 1)
                for steps in args.extrapolate:
                    ms = fixed + slope * steps
                    print(f"| {preset} | {params:.1f} M | {gflop:.2f} | {steps} (fit) | {ms:.0f} | {1e3 / ms:.2f} |")
            print(f"<!-- {preset}: per step {statistics.fmean([measured[s] / s for s in measured]):.1f} ms -->")


if __name__ == "__main__":
    main()
