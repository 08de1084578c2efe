"""A real training run with the fidelity monitor on: its curve and its cost.

    .venv/bin/python benchmarks/monitor_run.py [--showers 4096] [--steps 400] [--every 50]
                                               [--monitor 256] [--sample-steps 16] [--work DIR]
                                               [--plot docs/monitor_curve.png]
                                               [--backbone unet|transformer] [--prediction v|x]
                                               [--time-limit H:MM:SS]

Simulates stand-in ds2 showers, converts them, trains the tiny preset with
``python -m pipeline.train`` (one process, the CPU; ``--time-limit`` ends it after a wall-clock
budget, for comparisons at equal CPU time) with ``train.monitor.every_steps`` / ``showers`` /
``sample_steps`` set, then prints the monitor's rows (``logs/monitor.csv``) as a markdown table, the
monitor's share of the run's wall time, and plots the separation powers against their noise floors.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_tools.convert import convert
from data_tools.simulate import simulate_file
from pipeline.config import StoreLayout

CURVES = ("etot_einc", "e_layer", "width_x", "sparsity")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--showers", type=int, default=4096)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--monitor", type=int, default=256, help="showers per monitor check")
    p.add_argument("--sample-steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--work", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--backbone", default="unet", choices=["unet", "transformer"])
    p.add_argument("--prediction", default="v", choices=["v", "x"])
    p.add_argument("--time-limit",
                   help="stop training after this wall time (pipeline.train --time-limit)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "store.zarr").exists():
            simulate_file(work / "standin.hdf5", "ds2", args.showers, seed=1, workers=2)
            convert([work / "standin.hdf5"], work / "store.zarr", "ds2",
                    layout=StoreLayout(16, 256), validation_fraction=0.125, progress=False)
        cfg = work / "monitor.yaml"
        cfg.write_text(yaml.safe_dump({
            "run": {"dir": str(work / "run"), "seed": 1},
            "data": {"geometry": "ds2", "inputs": [str(work / "standin.hdf5")],
                     "store": str(work / "store.zarr"), "global_batch_size": args.batch,
                     "shuffle_chunks": 8, "num_workers": 1},
            "model": {"preset": "tiny", "backbone": args.backbone},
            "diffusion": {"prediction": args.prediction}, "sampling": {"steps": args.sample_steps},
            "distill": {"final_steps": args.sample_steps},
            "train": {"max_steps": args.steps, "lr": 1e-3, "warmup_steps": 20,
                      "checkpoint_every_steps": 0, "checkpoint_every_minutes": 0,
                      "validation": {"every_steps": 0}, "log_every_steps": 10, "ema_decay": 0.99,
                      "monitor": {"every_steps": args.every, "showers": args.monitor}},
        }))
        t0 = time.perf_counter()
        limit = ["--time-limit", args.time_limit] if args.time_limit else []
        code = subprocess.run([sys.executable, "-m", "pipeline.train", "--config", str(cfg),
                               *limit], cwd=ROOT).returncode
        if code not in (0, 75):  # 75: stopped at the time limit, as asked
            raise SystemExit(f"pipeline.train failed with exit code {code}")
        wall = time.perf_counter() - t0
        with open(work / "run" / "logs" / "monitor.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    spent = sum(float(r["monitor_seconds"]) for r in rows)
    print(f"ds2 tiny {args.backbone} ({args.prediction}-prediction), "
          f"{args.showers} stand-in showers, "
          f"batch {args.batch}, {args.steps} steps, monitor every {args.every} steps on "
          f"{args.monitor} validation showers with {args.sample_steps} DDIM steps: "
          f"run {wall:.0f} s, monitor {spent:.0f} s ({100 * spent / wall:.1f} %)\n")
    print("| step | E_tot/E_inc (floor) | layer energies (floor) | width x (floor) "
          "| sparsity (floor) | FPD | KPD | ms/shower |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{float(r[c]):.3f} ({float(r[c + '_floor']):.3f})" for c in CURVES]
        fpd = f"{float(r['fpd']):.3g} +- {float(r['fpd_error']):.1g}" if r["fpd"] else "-"
        kpd = f"{float(r['kpd']):.2g} +- {float(r['kpd_error']):.1g}" if r["kpd"] else "-"
        print(f"| {r['step']} | {' | '.join(cells)} | {fpd} | {kpd} | "
              f"{float(r['generation_ms_per_shower']):.0f} |")
    if args.plot:
        steps = [int(r["step"]) for r in rows]
        fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
        for ax, name in zip(axes, CURVES):
            ax.plot(steps, [float(r[name]) for r in rows], "o-", label="separation power")
            ax.plot(steps, [float(r[name + "_floor"]) for r in rows], "--", color="grey",
                    label="noise floor")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("optimiser step", fontsize=8)
            ax.set_ylim(0, None)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)


if __name__ == "__main__":
    main()
