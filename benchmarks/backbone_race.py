"""The voxel backbones at an equal CPU budget: the U-Net and the patch transformer trained side by side, one core
each, for the same wall time, with the fidelity monitor drawing their learning curves.

    .venv/bin/python benchmarks/backbone_race.py [--minutes 10] [--work /tmp/race] [--plot docs/backbone_race.png]
                                                 [--prediction v|x]
    .venv/bin/python benchmarks/backbone_race.py --plot-only --work /tmp/race --plot docs/backbone_race.png

Runs ``benchmarks/monitor_run.py`` for ``--backbone unet`` and ``--backbone transformer`` at the same time
(``OMP_NUM_THREADS=1`` each; ds2 stand-in, tiny presets, batch 16, monitor every 100 steps on 256 validation
showers with 8 DDIM steps, ``--time-limit``), then plots each separation power against wall-clock seconds
(the elapsed time of the monitored step, from ``logs/metrics.csv``) and prints where each run got.
``--plot-only`` redraws from the work directories of an earlier race.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
BACKBONES = ("unet", "transformer")
CURVES = ("etot_einc", "e_layer", "width_x", "sparsity")


def race(work: Path, minutes: float, prediction: str) -> None:
    """Both monitor runs at once, one thread each."""
    procs = []
    for backbone in BACKBONES:  # each run simulates the same stand-in showers (same seed) into its own directory
        d = work / backbone
        cmd = [sys.executable, str(ROOT / "benchmarks" / "monitor_run.py"), "--work", str(d), "--backbone", backbone,
               "--prediction", prediction,
               "--steps", "5000", "--every", "100", "--monitor", "256", "--sample-steps", "8",
               "--time-limit", f"0:{int(minutes):02d}:00"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                      stdout=open(d.with_suffix(".md"), "w"), stderr=subprocess.DEVNULL))
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"a monitor run failed; see {work}/*.md")


def curve(run: Path) -> tuple[list[float], list[dict[str, str]], float]:
    """(wall seconds of each monitor row, the rows, median training showers/s)."""
    with open(run / "logs" / "metrics.csv", newline="") as f:
        train = [r for r in csv.DictReader(f) if r["kind"] == "train"]
    elapsed = {int(r["step"]): float(r["elapsed_s"]) for r in train}
    with open(run / "logs" / "monitor.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seconds = [0.0 if int(r["step"]) == 0 else elapsed.get(int(r["step"]), float("nan")) for r in rows]
    rates = sorted(float(r["samples_per_s"]) for r in train[2:])
    return seconds, rows, rates[len(rates) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--work", type=Path, default=Path("/tmp/race"))
    p.add_argument("--plot", type=Path)
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--prediction", default="v", choices=["v", "x"], help="diffusion.prediction of both runs")
    args = p.parse_args()
    if not args.plot_only:
        for backbone in BACKBONES:
            (args.work / backbone).mkdir(parents=True, exist_ok=True)
        race(args.work, args.minutes, args.prediction)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    print("| backbone | steps reached | training showers/s | " + " | ".join(CURVES) + " | response (data) |")
    print("|---|---|---|" + "---|" * len(CURVES) + "---|")
    for backbone, style in zip(BACKBONES, ("o-", "s-")):
        seconds, rows, rate = curve(args.work / backbone / "run")
        for ax, name in zip(axes, CURVES):
            ax.plot(seconds, [float(r[name]) for r in rows], style, ms=3, label=backbone)
        last = rows[-1]
        print(f"| {backbone} | {last['step']} | {rate:.1f} | "
              + " | ".join(f"{float(last[c]):.3f} ({float(last[c + '_floor']):.3f})" for c in CURVES)
              + f" | {float(last['response_generated']):.3f} ({float(last['response_reference']):.3f}) |")
    for ax, name in zip(axes, CURVES):
        ax.set_title(f"{name} separation power", fontsize=9)
        ax.set_xlabel("wall-clock seconds (one core)", fontsize=8)
        ax.set_ylim(0, None)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    if args.plot:
        fig.savefig(args.plot, dpi=80)


if __name__ == "__main__":
    main()
