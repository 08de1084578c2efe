"""Voxel-network recipes raced at equal compute on stand-in ds2, judged with the yardstick.

    .venv/bin/python benchmarks/voxel_race.py --entries baseline,min_snr --seeds 0 1 --steps 3000 \
        --work runs/voxel_race            # one (entry, seed) after another, resumable
    .venv/bin/python benchmarks/voxel_race.py --work runs/voxel_race --tables-only \
        --results docs/voxel_race.json --plot docs/voxel_race.png

``--results`` keeps every finished run, and a run found there is not raced again: the race
accumulates across sessions and machines like the sensitivity benchmark.

Every entry is ``configs/fidelity_ds2_cpu.yaml`` (docs/fidelity.md's whole-model recipe: tiny patch
transformer, x-prediction, the v-loss, uniform training times) plus the config switches of
:data:`ENTRIES`. Each (entry, seed) is one ``benchmarks/fidelity.py`` run in
``WORK/<entry>/seed<S>``: ``run.seed = S``, ``train.max_steps = --steps`` (the same network and the
same optimiser steps: equal FLOPs; the cosine learning-rate schedule ends at the budget), the
fidelity monitor every ``--steps / 4`` steps (the learning curve, quick classifier on 2048
validation showers), then the teacher sampled with 8 undistilled DDIM steps generates one shower
per incident energy of the 10k reference (generation seed 7 + S) and ``pipeline.evaluate`` compares
them at the CaloChallenge protocol (3 classifier seeds). An entry's AUC is the mean +- std over its
training seeds x classifier seeds, so the spread holds the training, the sampling and the
classifier noise. The null of this reference and protocol is in docs/fidelity.md (0.502 +- 0.009
low, 0.486 +- 0.008 high). Several processes may race different entries at once (one thread each):
each run writes only its own directory, and ``--tables-only`` gathers them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from fidelity import _minutes, fmt  # noqa: E402 - benchmarks/fidelity.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/fidelity_ds2_cpu.yaml"
RESULT = "race.json"  # fidelity.py's result file in each run directory
VT = "diffusion.voxel_training"
ENTRIES: dict[str, list[str]] = {
    "baseline": [],
    "logit_normal": [f"{VT}.time_sampling=logit_normal"],  # t = sigmoid(N(0, 1))
    "shift_-2": [f"{VT}.logsnr_shift=-2"],  # noisier training times
    "shift_+2": [f"{VT}.logsnr_shift=2"],  # cleaner training times
    "min_snr": [f"{VT}.weighting=min_snr"],  # x error weighted by min(SNR, 5)
    "sigmoid_-2": [f"{VT}.weighting=sigmoid", f"{VT}.sigmoid_bias=-2"],
    "v_prediction": ["diffusion.prediction=v"],
    # rectified flow as in SD3: straight paths, velocity MSE, logit-normal times (both networks'
    # schedule; the layer network keeps its loss and times)
    "flow": ["diffusion.process=flow", f"{VT}.weighting=flow", f"{VT}.time_sampling=logit_normal"],
}
METRICS = ("auc_low", "auc_high", "fpd", "etot_einc", "e_layer", "width_x", "sparsity")


def run_dir(work: Path, entry: str, seed: int) -> Path:
    return work / entry / f"seed{seed}"


def overrides(work: Path, entry: str, seed: int, steps: int) -> list[str]:
    return [f"run.dir={run_dir(work, entry, seed)}", f"run.seed={seed}",
            f"train.max_steps={steps}", f"train.monitor.every_steps={max(1, steps // 4)}",
            "sampling.steps=8", "distill.final_steps=8", f"generate.seed={7 + seed}",
            *ENTRIES[entry]]


def race_one(work: Path, entry: str, seed: int, steps: int, threads: int,
             done: dict[str, Any]) -> None:
    """One entry and seed through benchmarks/fidelity.py (skipped when its result exists, here or
    among the ``done`` runs of the results file)."""
    if (run_dir(work, entry, seed) / RESULT).exists() or f"{entry}/seed{seed}" in done:
        print(f"[race] {entry} seed {seed}: done", flush=True)
        return
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--config", CONFIG,
           "--train-minutes", "100000", "--threads", str(threads), "--generation-seeds", "1",
           "--no-null", "--out", RESULT,
           *(x for kv in overrides(work, entry, seed, steps) for x in ("--set", kv))]
    print(f"[race] {entry} seed {seed}: {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
        raise SystemExit(f"[race] {entry} seed {seed} failed; re-run to resume")


def collect(work: Path, done: dict[str, Any]) -> dict[str, Any]:
    """``entry/seedS`` -> its fidelity.py result and training minutes: the ``done`` runs of the
    results file, then the finished runs in ``work``."""
    runs = dict(done)
    for path in sorted(work.glob(f"*/seed*/{RESULT}")):
        result = json.loads(path.read_text())
        runs[f"{path.parent.parent.name}/{path.parent.name}"] = {
            "result": result,
            # the training run's wall minutes, monitor included (its metrics log)
            "train_minutes": _minutes({"seconds": None, "run_dir": path.parent})}
    return runs


def gather(runs: dict[str, Any]) -> dict[str, Any]:
    """Per entry, each metric's mean and spread over its runs, and the curves."""
    out: dict[str, Any] = {}
    for entry in ENTRIES:
        mine = [r for key, r in sorted(runs.items()) if key.split("/")[0] == entry]
        if not mine:
            continue
        results = [r["result"] for r in mine]
        teachers = [r["stages"][0] for r in results]
        fid = [t["fidelity"] for t in teachers]
        row: dict[str, Any] = {"overrides": ENTRIES[entry], "seeds": len(results),
                               "steps": teachers[0]["steps"],
                               "train_minutes": float(np.mean([r["train_minutes"] for r in mine])),
                               "ms_per_shower": float(np.mean([f["ms_per_shower"] for f in fid])),
                               "curves": [r["curve"] for r in results]}
        for key in ("auc_low", "auc_high"):
            aucs = [a for f in fid for g in f["by_generation_seed"] for a in g[key + "_runs"]]
            row[key], row[key + "_std"] = float(np.mean(aucs)), float(np.std(aucs, ddof=1))
            row[key + "_runs"] = len(aucs)
        for key in METRICS[2:]:
            vals = [f[key] for f in fid if f.get(key) is not None]
            row[key] = float(np.mean(vals)) if vals else None
            row[key + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        out[entry] = row
    return out


def table(rows: dict[str, Any]) -> str:
    head = ("| entry | switches | seeds | steps | train min | AUC low | AUC high | FPD | "
            "E_tot/E_inc | layer energies | width x | sparsity | ms/shower |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, r in rows.items():
        cells = [name, ", ".join(s.split(".")[-1] for s in r["overrides"]) or "-",
                 str(r["seeds"]), str(r["steps"]), fmt(r["train_minutes"], 1),
                 f"{fmt(r['auc_low'])} +- {fmt(r['auc_low_std'])}",
                 f"{fmt(r['auc_high'])} +- {fmt(r['auc_high_std'])}",
                 *(_spread(r, k, 1 if k == "fpd" else 3) for k in METRICS[2:]),
                 fmt(r["ms_per_shower"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(row: dict[str, Any], key: str, digits: int) -> str:
    """``mean +- std over the seeds`` (the mean alone for one seed)."""
    std = row.get(key + "_std")
    return fmt(row[key], digits) + ("" if std is None else f" +- {fmt(std, digits)}")


def plot(rows: dict[str, Any], path: Path) -> None:
    """Each entry's monitor curves (every seed) against optimiser steps."""
    keys = ("classifier_auc", "etot_einc", "width_x", "sparsity")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2))
    for i, (name, r) in enumerate(rows.items()):
        for j, curve in enumerate(r["curves"]):
            for ax, key in zip(axes, keys):
                pts = [(int(c["step"]), float(c[key])) for c in curve
                       if c.get(key) not in (None, "")]
                if pts:
                    ax.plot(*zip(*pts), "o-", ms=3, color=f"C{i}", alpha=0.8,
                            label=name if j == 0 else None)
    for ax, key in zip(axes, keys):
        ax.set_title(f"monitor: {key}", fontsize=9)
        ax.set_xlabel("optimiser step", fontsize=8)
        ax.set_yscale("linear" if key == "classifier_auc" else "log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "voxel_race")
    p.add_argument("--entries", default="baseline", help=f"comma list of {', '.join(ENTRIES)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps of every entry")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tables-only", action="store_true")
    p.add_argument("--results", type=Path, help="write the gathered results here (JSON)")
    p.add_argument("--plot", type=Path)
    args = p.parse_args()
    unknown = [e for e in args.entries.split(",") if e not in ENTRIES]
    if unknown:
        raise SystemExit(f"--entries: unknown {unknown}; choose from {list(ENTRIES)}")
    done = (json.loads(args.results.read_text())["runs"]
            if args.results and args.results.exists() else {})
    if not args.tables_only:
        for entry in args.entries.split(","):
            for seed in args.seeds:
                race_one(args.work.resolve(), entry, seed, args.steps, args.threads, done)
    runs = collect(args.work.resolve(), done)
    rows = gather(runs)
    print(table(rows))
    if args.results:
        args.results.write_text(json.dumps({"runs": runs, "entries": rows}, indent=1))
    if args.plot and rows:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
