"""Training throughput of pipeline.train on CPU: 1 process vs 2 processes (torchrun, gloo, ZeRO-2).

    .venv/bin/python benchmarks/train_throughput.py [--geometry ds3] [--preset tiny]
                                                    [--backbone unet] [--global-batch 8]
                                                    [--steps 10] [--warmup 3] [--procs 1 2]

Simulates stand-in showers into a temporary store, runs ``python -m pipeline.train`` for ``--steps``
optimiser steps with the same global batch for every process count (1 process: all cores;
N processes: ``OMP_NUM_THREADS = cores / N`` each) and reads the per-step showers/s from the run's
metrics.csv, skipping the first ``--warmup`` steps. FLOP utilisation = showers/s x 3 x forward FLOPs
per shower (``pipeline.tools.info.model_info``: both networks; a training step costs ~3 forward
passes) divided by the fp32 matmul peak measured here with all cores (``torch.mm`` of 2048^2
matrices). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_tools.convert import convert
from data_tools.simulate import simulate_file
from pipeline.config import StoreLayout, load_config
from pipeline.tools.info import model_info


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul with the default thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def run(config: Path, procs: int, cores: int) -> float:
    """Wall seconds of one training run (1 process, or ``procs`` under torchrun)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "OMPI_"))}
    env["OMP_NUM_THREADS"] = str(max(1, cores // procs))
    launcher = (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
                if procs > 1 else [])
    cmd = [sys.executable, *launcher, "-m", "pipeline.train", "--config", str(config)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--geometry", default="ds3", choices=["ds2", "ds3"])
    p.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    p.add_argument("--backbone", default="unet", choices=["unet", "transformer"])
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--showers", type=int, default=512)
    args = p.parse_args()
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="train_bench_") as tmp:
        tmp = Path(tmp)
        simulate_file(tmp / "standin.hdf5", args.geometry, args.showers, seed=1, workers=1)
        store = convert([tmp / "standin.hdf5"], tmp / "store.zarr", args.geometry,
                        layout=StoreLayout(16, 256), validation_fraction=0.1, progress=False)
        overrides = {"data": {"geometry": args.geometry, "inputs": ["unused.hdf5"],
                              "store": str(store), "global_batch_size": args.global_batch,
                              "num_workers": 1, "shuffle_chunks": 8},
                     "model": {"preset": args.preset, "backbone": args.backbone},
                     "train": {"max_steps": args.warmup + args.steps, "warmup_steps": 1,
                               "validation": {"every_steps": 0}, "checkpoint_every_steps": 0,
                               "checkpoint_every_minutes": 0, "log_every_steps": 1}}
        cfg = load_config(None, ["data.inputs=[x]", f"data.geometry={args.geometry}",
                                 f"model.preset={args.preset}", f"model.backbone={args.backbone}"])
        info = model_info(cfg)
        flops_per_shower = 3 * sum(d["flops"] for d in info.values())
        peak = matmul_peak_gflops()
        print(f"# {args.geometry}, preset {args.preset}, {args.backbone}, "
              f"global batch {args.global_batch}, {args.steps} timed steps "
              f"after {args.warmup}; {cores} cores; fp32 matmul peak {peak:.1f} GFLOP/s; "
              f"{flops_per_shower / 1e9:.3f} GFLOP per shower per training step\n")
        print("| processes | threads each | showers/s | step time (s) | GFLOP/s | of matmul peak "
              "| wall (s) |")
        print("|---|---|---|---|---|---|---|")
        for procs in args.procs:
            run_dir = tmp / f"run_{procs}"
            config = tmp / f"c_{procs}.yaml"
            config.write_text(yaml.safe_dump({**overrides,
                                              "run": {"dir": str(run_dir), "seed": 1}}))
            wall = run(config, procs, cores)
            with open(run_dir / "logs" / "metrics.csv", newline="") as f:
                rows = [r for r in csv.DictReader(f) if r["kind"] == "train"]
            rates = [float(r["samples_per_s"]) for r in rows[args.warmup:]]
            rate = statistics.median(rates)
            gflops = rate * flops_per_shower / 1e9
            print(f"| {procs} | {max(1, cores // procs)} | {rate:.2f} | "
                  f"{args.global_batch / rate:.3f} | {gflops:.1f} | {100 * gflops / peak:.0f}% | "
                  f"{wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
