"""Reproducibility of generation: how far the same showers drift between batch splits, thread counts and CPU
kernels, in float32 and in float64.

    .venv/bin/python benchmarks/reproducibility.py [--geometry ds2] [--steps 3] [--json docs/reproducibility.json]

Each kernel setting (oneDNN ISA caps, ATen CPU capability, 1 or 2 threads) runs in its own process and
generates the same 6 showers (energies 1 GeV-1 TeV, fixed seeds, deterministic and stochastic DDIM, no
threshold) from the tiny preset with random weights (zero-initialised outputs randomised, as in the
tests) and the statistics of a random batch (``tests/conftest.py``), once as one batch of 6, as 2 + 4 and
as 6 batches of 1. The parent compares every split with the whole batch of the same process (batch-size
spread) and every process's whole batch with the first one's (kernel spread), reporting per comparison:

- ``voxel``: largest relative difference among voxels above the 15.15 keV threshold in either sample;
- ``layer``: largest relative difference of the layer energies (the sums the inverse conserves);
- ``flips``: voxels above the threshold in one sample and below it in the other;
- ``any voxel``: largest relative difference (to the larger of the two) over all voxels, including the
  ones far below the threshold, where ``(sigmoid(z) - alpha) / (1 - 2 alpha)`` cancels and amplifies
  the last bits (1.0: one of the two is exactly zero).

Weights are drawn once in the parent; the noise is drawn in each process (``NoiseSource``), so the kernel
comparison includes the noise's own last-bit differences between CPU capabilities.

The float32 tolerances of the tests (``tests/conftest.py``, ``FLOAT32_*``) are set from this table; the
float64 runs show that the logic itself is batch-independent to rounding (~1e-11).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

#: kernel settings: name -> environment (each runs in a fresh process)
VARIANTS: dict[str, dict[str, str]] = {
    "native": {},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "onednn-avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "sse41-default": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"},
}
SPLITS = {"6": [6], "2+4": [2, 4], "1x6": [1] * 6}
ENERGIES = [1e3, 5e3, 2e4, 1e5, 3e5, 1e6]
SEEDS = [5, 17, 3, 99, 1234, 7]


def build(geometry_name: str) -> tuple[list[torch.nn.Module], torch.nn.Module]:
    """The tests' tiny pair with random weights and their random-batch preprocessor."""
    from pipeline.config import ModelConfig
    from pipeline.models import build_models
    from pipeline.physics.geometry import load_geometry

    from conftest import make_preprocessor, randomize_zero_init

    torch.manual_seed(0)
    nets = [randomize_zero_init(m).eval() for m in build_models(ModelConfig(preset="tiny"), load_geometry(geometry_name))]
    return nets, make_preprocessor(geometry_name)[0]


def worker(out: Path, weights: Path, geometry_name: str, steps: int) -> None:
    """Generate every (dtype, eta, split) sample in this process with the parent's weights and save them
    (weights are drawn once: torch's vectorised random draws differ in the last bits between CPU
    capabilities, and this measures the kernels)."""
    from pipeline.diffusion import NetworkSampling, NoiseSource, synthesize

    nets, pre = build(geometry_name)
    saved = torch.load(weights, weights_only=True)
    for m, state in zip([*nets, pre], saved):
        m.load_state_dict(state)
    energies = torch.tensor(ENERGIES, dtype=torch.float64)
    arrays = {}
    for dtype in (torch.float32, torch.float64):
        layer_net, unet = (m.to(dtype) for m in nets)
        kw = dict(layer=NetworkSampling(layer_net, steps), voxel=NetworkSampling(unet, steps), preprocessor=pre.to(dtype),
                  threshold=False)
        for eta in (0.0, 1.0):
            for name, split in SPLITS.items():
                parts, start = [], 0
                for size in split:
                    parts.append(synthesize(energies[start:start + size], SEEDS[start:start + size], eta=eta, **kw))
                    start += size
                arrays[f"{str(dtype)[6:]}/eta{eta:g}/{name}"] = torch.cat(parts).numpy()
    noise = NoiseSource(SEEDS)(pre.shape, 0, "voxels").numpy()
    np.savez(out, noise=noise, **arrays)


def differences(a: np.ndarray, b: np.ndarray, threshold: float) -> dict[str, float]:
    """The four measures of the module docstring for two samples (N, L, A, R)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    above = np.maximum(a, b) >= threshold
    rel = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-300)
    la, lb = a.sum(axis=(2, 3)), b.sum(axis=(2, 3))
    return {"voxel": float(rel[above].max(initial=0.0)),
            "layer": float((np.abs(la - lb) / np.maximum(lb, 1e-300)).max()),
            "flips": int(((a >= threshold) != (b >= threshold)).sum()),
            "any voxel": float(rel[(a > 0) | (b > 0)].max(initial=0.0))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--geometry", default="ds2")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--json", type=Path, help="write every comparison here")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.weights, args.geometry, args.steps)
        return
    from pipeline.physics.geometry import load_geometry

    threshold = load_geometry(args.geometry).threshold_mev
    runs: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        nets, pre = build(args.geometry)
        torch.save([m.state_dict() for m in [*nets, pre]], weights)
        for variant, env in VARIANTS.items():
            for threads in args.threads:
                name, out = f"{variant}/{threads}t", Path(tmp) / f"{variant}-{threads}.npz"
                subprocess.run([sys.executable, __file__, "--worker", str(out), "--weights", str(weights),
                                "--geometry", args.geometry, "--steps", str(args.steps)], check=True,
                               env={**os.environ, **env, "OMP_NUM_THREADS": str(threads)})
                with np.load(out) as f:
                    runs[name] = dict(f)
                print(f"ran {name}", file=sys.stderr)
    rows = []
    first = next(iter(runs))
    ref_noise = runs[first]["noise"]
    noise = {name: float(np.abs(arrays.pop("noise") - ref_noise).max()) for name, arrays in runs.items()}
    for name, arrays in runs.items():
        for key, whole in arrays.items():
            dtype, eta, split = key.split("/")
            if split != "6":
                rows.append({"what": f"batch {split} vs 6", "run": name, "dtype": dtype, "eta": eta,
                             **differences(whole, arrays[f"{dtype}/{eta}/6"], threshold)})
            elif name != first:
                note = " (noise differs in the last bits)" if noise[name] > 0 else ""
                rows.append({"what": f"kernels vs {first}{note}", "run": name, "dtype": dtype, "eta": eta,
                             **differences(whole, runs[first][key], threshold)})
    print(f"{args.geometry}, tiny preset with random weights, {args.steps} DDIM steps, 6 showers, "
          f"{len(runs)} processes ({', '.join(runs)})\n")
    print("initial noise, largest absolute difference to the first process: "
          + ", ".join(f"{name} {value:.1e}" for name, value in noise.items() if name != first) + "\n")
    print("| comparison | dtype | max rel. voxel above threshold | max rel. layer energy | threshold flips "
          "| max rel. any voxel |")
    print("|---|---|---|---|---|---|")
    for what in sorted({r["what"] for r in rows}):
        for dtype in ("float32", "float64"):
            sel = [r for r in rows if r["what"] == what and r["dtype"] == dtype]
            print(f"| {what} | {dtype} | {max(r['voxel'] for r in sel):.1e} | {max(r['layer'] for r in sel):.1e} | "
                  f"{max(r['flips'] for r in sel)} | {max(r['any voxel'] for r in sel):.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"noise": noise, "comparisons": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
