"""Ablations of the fidelity risks (issue 13), each a variant trained like its baseline for the same
budget.

    # layer network alone, ds3
    .venv/bin/python benchmarks/fidelity_ablations.py --part layers [--minutes 6]
    # voxel network alone, ds2
    .venv/bin/python benchmarks/fidelity_ablations.py --part voxels [--minutes 8]
    .venv/bin/python benchmarks/fidelity_ablations.py --part layers --tables-only

``layers``: the layer-energy network alone on the stand-in ds3 store of
``configs/fidelity_ds3_layers_cpu.yaml`` (its 64-step sampler, no distillation,
``benchmarks/fidelity.py --stages 0``): the baseline; Fourier features of log E_inc up to 4 pi
instead of 100 pi (``model.energy_max_freq``); x-prediction; and, on the baseline's weights, the
clean-sample estimate clipped to the physical range at every step (``sampling.clip_x``). Each run
trains with a cosine schedule over ``--steps`` (default sized for ``--minutes``).

``voxels``: the voxel network alone (``train.networks: [voxels]``) on the stand-in ds2 store of
``configs/fidelity_ds2_cpu.yaml``; the fidelity monitor at the end samples the voxels for the
validation showers' true layer energies, so only the voxel network is compared: the baseline, and
empty voxels dequantised below the threshold in training (``train.dequantize_empty``) with the
threshold-aware inverse (``sampling.threshold_fractions``); and that inverse alone (a sampling-time
switch: the run trains exactly as the baseline, which is bit-reproducible on a CPU, and only its
monitor differs).

Variants train for the same number of steps (``--steps``, default sized for ``--minutes``; the
wall-clock limit is twice that, so every variant reaches it). One thread per run
(``OMP_NUM_THREADS=1``); results in ``runs/ablations/<part>.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "ablations"
LAYER_CONFIG, VOXEL_CONFIG = "configs/fidelity_ds3_layers_cpu.yaml", "configs/fidelity_ds2_cpu.yaml"
LAYER_VARIANTS = {"baseline": [], "energy_max_freq 4": ["model.energy_max_freq=4"],
                  "x-prediction": ["diffusion.prediction=x"]}
VOXEL_VARIANTS = {"baseline": [], "threshold-aware inverse": ["sampling.threshold_fractions=true"],
                  "dequantised empty voxels": ["train.dequantize_empty=true",
                                               "sampling.threshold_fractions=true"]}


def sets(overrides: list[str]) -> list[str]:
    return [x for kv in overrides for x in ("--set", kv)]


def run(cmd: list[str]) -> None:
    print(f"[ablation] {' '.join(cmd[1:])}", flush=True)
    code = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1")).returncode
    if code != 0:
        raise SystemExit(f"exit code {code}: {' '.join(cmd)}")


def layer_part(minutes: float, steps: int) -> dict[str, Any]:
    out = {}
    variants = {**LAYER_VARIANTS, "clip_x (baseline weights)": None}
    for name, overrides in variants.items():
        run_name = "baseline" if overrides is None else name.replace(" ", "_")
        extra = ["sampling.clip_x=true"] if overrides is None else overrides
        result = f"{run_name}{'_clip' if overrides is None else ''}.json"
        common = [f"run.dir={WORK / 'layers' / run_name}", f"train.max_steps={steps}",
                  "train.monitor.every_steps=0"]
        run([sys.executable, "benchmarks/fidelity.py", "--config", LAYER_CONFIG,
             "--train-minutes", str(2 * minutes), "--stages", "0", "--threads", "1",
             "--out", result, *sets(common + extra)])
        out[name] = json.loads((WORK / "layers" / run_name / result).read_text())["stages"][0]
    return out


def voxel_part(minutes: float, steps: int) -> dict[str, Any]:
    out = {}
    for name, overrides in VOXEL_VARIANTS.items():
        run_dir = WORK / "voxels" / name.replace(" ", "_")
        common = [f"run.dir={run_dir}", "train.networks=[voxels]", f"train.max_steps={steps}",
                  f"train.monitor.every_steps={steps}", "train.checkpoint_every_minutes=0"]
        if not (run_dir / "DONE.json").exists():
            run([sys.executable, "-m", "pipeline.train", "--config", VOXEL_CONFIG,
                 "--time-limit", f"{2 * minutes}m", *sets(common + overrides)])
        with open(run_dir / "logs" / "monitor.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        out[name] = {"step": int(rows[-1]["step"]),
                     **{k: float(v) for k, v in rows[-1].items() if v and k != "step"}}
    return out


def print_table(part: str, result: dict[str, Any]) -> None:
    if part == "layers":
        print("| variant | optimiser steps | classifier AUC | E_tot/E_inc | layer energies "
              "| mean E_tot/E_inc gen / ref | response wiggle | E_tot > E_inc |")
        print("|---|---|---|---|---|---|---|---|")
        for name, s in result.items():
            f = s["fidelity"]
            print(f"| {name} | {s['steps']} | {f['classifier_auc']:.3f} | {f['etot_einc']:.4f} | "
                  f"{f['e_layer']:.4f} | "
                  f"{f['response_generated']:.4f} / {f['response_reference']:.4f} | "
                  f"{f['response_wiggle']:.4f} | {f['etot_above_einc']:.4f} |")
        return
    print("| variant | optimiser steps | E_tot/E_inc | layer energies | width x | sparsity | FPD "
          "| AUC (high-level) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in result.items():
        auc = f"{r['classifier_auc']:.3f}" if "classifier_auc" in r else "-"
        print(f"| {name} | {r['step']} | {r['etot_einc']:.4f} | {r['e_layer']:.4f} | "
              f"{r['width_x']:.4f} | {r['sparsity']:.4f} | {r.get('fpd', float('nan')):.4f} | "
              f"{auc} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["layers", "voxels"], required=True)
    p.add_argument("--minutes", type=float, default=6.0, help="training budget of each variant")
    p.add_argument("--steps", type=int,
                   help="optimiser steps (cosine length); default: sized for --minutes")
    p.add_argument("--tables-only", action="store_true")
    args = p.parse_args()
    path = WORK / f"{args.part}.json"
    if not args.tables_only:
        WORK.mkdir(parents=True, exist_ok=True)
        # measured one-thread rates on the 2-core machine
        per_minute = 480 if args.part == "layers" else 180
        steps = args.steps or int(args.minutes * per_minute)
        result = (layer_part(args.minutes, steps) if args.part == "layers"
                  else voxel_part(args.minutes, steps))
        path.write_text(json.dumps(result, indent=1))
    print_table(args.part, json.loads(path.read_text()))


if __name__ == "__main__":
    main()
