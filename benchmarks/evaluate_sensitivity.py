"""Sensitivity curves: what each evaluation metric sees of distortions of known size (docs/evaluation.md).

    .venv/bin/python benchmarks/evaluate_sensitivity.py --geometry ds2 [--n 10000] [--workdir /tmp/sensitivity]
        [--classifiers low,high] [--classifier-seeds 3] [--samples 1] [--cases "radial smear,energy scale 1 %"]
        [--threads 2] [--results docs/sensitivity_ds2.json] [--plot docs/sensitivity_ds2.png] [--tables-only]

Stand-in samples of --n showers from the simulator: the reference (seed 1); the null, three independent
samples of the same size (seeds 3, 4, 5) against the reference, whose spread is the yardstick; and the
distorted samples: each distortion of ``pipeline.evaluation.distortions.sensitivity_cases`` applied, as it is
read, to --samples independent samples (seeds 2, 6, ...). Every case is evaluated as ``pipeline.evaluate``
does: separation powers with their noise floors, the classifiers with the CaloChallenge protocol
(``--classifier-seeds`` seeded runs each: other splits and initialisations), FPD at the full sample size (the
Frechet distance of the two Gaussian fits, no extrapolation: its null value is the finite-size bias) and KPD.

A distortion is *detected at 2 sigma* by a metric when its mean exceeds the null's mean by twice the null's
spread (the standard deviation of single measurements: classifier seeds x null samples for the AUCs, null
samples for the rest): a single measurement at that distortion typically stands out from the null.

Resumable and incremental: every measurement is cached in --workdir/cache.json as it finishes, so a killed
run continues where it stopped and ``--classifiers high`` first, ``low`` later, fill one table. The results
JSON holds every measurement and the per-case summaries; --plot draws significance against strength.
On a fresh machine (empty --workdir) the measurements of an existing --results file of the same
settings are the starting point, so a committed partial table resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_tools.simulate import simulate_file
from pipeline.data.samples import Sample, open_sample
from pipeline.evaluation.classifier import (
    ClassifierConfig,
    DenseFeatures,
    LowLevelFeatures,
    train_once,
)
from pipeline.evaluation.distortions import DistortedSample, sensitivity_cases
from pipeline.evaluation.observables import SampleObservables, compute_observables, voxel_log_edges
from pipeline.evaluation.physics_distance import fpd_full_size, kpd
from pipeline.evaluation.runner import separations, summarise
from pipeline.evaluation.separation import compare_grouped_counts
from pipeline.physics.geometry import load_geometry

REFERENCE_SEED, NULL_SEEDS, DISTORTED_SEEDS = 1, (3, 4, 5), (2, 6, 7)
METRICS = ("auc_low", "auc_high", "fpd", "kpd", "etot_einc", "voxel", "e_layer", "width_x", "sparsity")


class Cache:
    """Measurements keyed by (case, sample, metric), saved atomically after each one."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path, self.settings = path, settings
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"settings": settings, "values": {}}
        if self.data["settings"] != settings:
            sys.exit(f"{path} holds measurements made with other settings ({self.data['settings']}); "
                     f"use another --workdir or delete it")

    def resume_from(self, results: Path) -> None:
        """Start an empty cache from a results JSON of the same settings (a committed partial
        table)."""
        old = json.loads(results.read_text())
        if {k: old["settings"].get(k) for k in self.settings} != self.settings:
            sys.exit(f"{results} holds measurements made with other settings ({old['settings']}); "
                     f"use another --results or --workdir")
        self.data["values"] = dict(old["values"])
        print(f"resuming from the {len(old['values'])} measurements in {results}")

    def get(self, *key: str) -> Any:
        return self.data["values"].get("|".join(key))

    def put(self, value: Any, *key: str) -> None:
        self.data["values"]["|".join(key)] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=0))
        os.replace(tmp, self.path)


def sample_file(workdir: Path, geometry: str, n: int, seed: int) -> Path:
    path = workdir / f"{geometry}_{n}_seed{seed}.hdf5"
    if not path.exists():
        simulate_file(path, geometry, n, seed, workers=2, dtype="float32")
    return path


def observable_metrics(gen: SampleObservables, ref: SampleObservables) -> dict[str, float]:
    """Separation powers (value and floor) and the two physics distances of one pair of samples."""
    seps = separations(gen, ref, 50)
    seps["voxel"] = compare_grouped_counts(gen.voxel_groups, ref.voxel_groups, voxel_log_edges(), 50)
    summary = summarise(seps)
    out: dict[str, float] = {}
    for key in ("etot_einc", "voxel"):
        out[key], out[key + "_floor"] = summary[key]["value"], summary[key]["floor"]
    for key in ("e_layer", "width_x", "sparsity"):
        out[key], out[key + "_floor"] = summary[key]["mean"], summary[key]["floor_mean"]
    xr, xg = ref.hlf.classifier_features(), gen.hlf.classifier_features()
    out["fpd"], out["kpd"] = fpd_full_size(xr, xg), kpd(xr, xg)["value"]
    return out


def classifier_auc(kind: str, gen: SampleObservables, ref: SampleObservables, seed: int) -> dict[str, Any]:
    if kind == "high":
        feats = (DenseFeatures(gen.hlf.classifier_features()), DenseFeatures(ref.hlf.classifier_features()))
    else:
        feats = (LowLevelFeatures(gen.low_level, gen.low_level_energies),
                 LowLevelFeatures(ref.low_level, ref.low_level_energies))
    r = train_once(*feats, ClassifierConfig(seed=seed), label=f"{kind}-level classifier")
    return {k: r[k] for k in ("auc", "jsd", "best_epoch", "epochs", "n_train", "n_test", "seconds")}


def measure(name: str, sample_id: str, sample: Sample, ref: SampleObservables, cache: Cache, kinds: list[str],
            seeds: int) -> None:
    """Every missing measurement of one (case, sample)."""
    todo_obs = cache.get(name, sample_id, "observables") is None
    todo_cls = [(k, s) for k in kinds for s in range(seeds) if cache.get(name, sample_id, f"auc_{k}", str(s)) is None]
    if not todo_obs and not todo_cls:
        return
    t0 = time.perf_counter()
    gen = compute_observables(sample, low_level_rows=np.arange(sample.n) if "low" in kinds else None)
    if todo_obs:
        cache.put(observable_metrics(gen, ref), name, sample_id, "observables")
    for kind, seed in todo_cls:
        cache.put(classifier_auc(kind, gen, ref, seed), name, sample_id, f"auc_{kind}", str(seed))
    print(f"{name} [{sample_id}]: {time.perf_counter() - t0:.0f} s", flush=True)


def values(cache: Cache, name: str, metric: str) -> list[float]:
    """All single measurements of ``metric`` for case ``name`` (every sample, every classifier seed)."""
    out = []
    for key, v in cache.data["values"].items():
        case, _, what, *rest = key.split("|")
        if case != name:
            continue
        if metric.startswith("auc_") and what == metric:
            out.append(v["auc"])
        elif what == "observables" and metric in v:
            out.append(v[metric])
    return out


def summarise_cases(cache: Cache, names: list[str]) -> dict[str, Any]:
    """Per case and metric: mean, std, count and the significance against the null ((mean - null) / null std)."""
    null = {m: values(cache, "null", m) for m in METRICS}
    out: dict[str, Any] = {}
    for name in ["null", *names]:
        row: dict[str, Any] = {}
        for m in METRICS:
            v = values(cache, name, m)
            if not v:
                continue
            entry = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None, "n": len(v)}
            n0 = null[m]
            if len(n0) > 1 and np.std(n0, ddof=1) > 0:
                entry["significance"] = (entry["mean"] - float(np.mean(n0))) / float(np.std(n0, ddof=1))
            row[m] = entry
        obs = [v for k, v in cache.data["values"].items() if k.startswith(name + "|") and k.endswith("|observables")]
        if obs:
            row["floors"] = {m: float(np.mean([o[m + "_floor"] for o in obs])) for m in METRICS if m + "_floor" in obs[0]}
        out[name] = row
    return out


def detection_limits(summary: dict[str, Any], cases: list) -> dict[str, dict[str, str]]:
    """Per family and metric: the weakest strength detected at 2 sigma ("> strongest" when none is)."""
    out: dict[str, dict[str, str]] = {}
    for case in cases:
        fam = out.setdefault(case.family, {})
        for m in METRICS:
            entry = summary.get(case.name, {}).get(m)
            if entry is None or "significance" not in entry:
                fam.setdefault(m, "not run")
                continue
            if entry["significance"] > 2 and fam.get(m) in (None, "not run", "none"):
                fam[m] = f"{case.strength:g}{case.unit}"
            elif fam.get(m) in (None, "not run"):
                fam[m] = "none"
    return out


def markdown(result: dict[str, Any]) -> str:
    s, summary = result["settings"], result["summary"]
    lines = [f"Stand-in {s['geometry']}, {s['n']} vs {s['n']} showers, CaloChallenge-protocol classifiers with "
             f"{s['classifier_seeds']} seeds per sample; null: {len(NULL_SEEDS)} independent samples. Each cell: "
             "mean ± std of single measurements, and in brackets (mean - null mean) / null std.", "",
             "| case | AUC low | AUC high | FPD x1e3 | KPD x1e3 | S(E_tot/E_inc) | S(voxel) | S(E layer) | S(width x) | "
             "S(sparsity) |", "|" + "---|" * 10]
    scale = {"fpd": 1e3, "kpd": 1e3}
    for name, row in summary.items():
        cells = []
        for m in METRICS:
            e = row.get(m)
            if e is None:
                cells.append("-")
                continue
            k = scale.get(m, 1.0)
            text = f"{e['mean'] * k:.4g}" + (f" ± {e['std'] * k:.2g}" if e["std"] is not None else "")
            if "significance" in e and name != "null":
                text += f" ({e['significance']:+.1f})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Weakest distortion detected at 2 sigma (mean - null mean > 2 null std):", "",
              "| family | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 1)]
    for fam, limits in result["detection"].items():
        lines.append(f"| {fam} | " + " | ".join(limits.get(m, "-") for m in METRICS) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], cases: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(c.family for c in cases if c.strength > 0))  # strength 0 has no log axis
    fig, axes = plt.subplots(2, math.ceil(len(families) / 2), figsize=(4.2 * math.ceil(len(families) / 2), 7.5))
    for ax, fam in zip(axes.flat, families):
        fam_cases = [c for c in cases if c.family == fam]
        for m in METRICS:
            pts = [(c.strength, result["summary"].get(c.name, {}).get(m, {}).get("significance")) for c in fam_cases]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m, lw=2.2 if m.startswith("auc") else 1.0)
        ax.axhline(2, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=2)
        ax.set_title(fam)
        ax.set_xlabel(f"strength ({fam_cases[0].unit.strip()})")
        ax.set_ylabel("(mean - null) / null std")
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Metric sensitivity, stand-in {result['settings']['geometry']}, {result['settings']['n']} vs "
                 f"{result['settings']['n']} showers (dashed: 2 sigma)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--geometry", default="ds2", choices=("ds2", "ds3"))
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sensitivity"))
    p.add_argument("--classifiers", default="low,high", help="comma list of low, high (or none)")
    p.add_argument("--classifier-seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=1, choices=(1, 2, 3), help="independent distorted samples per case")
    p.add_argument("--cases", help="comma list of case names or families to run (default all)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--results", type=Path, help="write the results JSON here")
    p.add_argument("--plot", type=Path, help="write the significance plot here")
    p.add_argument("--tables-only", action="store_true", help="only summarise what the cache holds")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    kinds = [k for k in args.classifiers.split(",") if k in ("low", "high")]
    work = args.workdir / f"{args.geometry}_{args.n}"
    work.mkdir(parents=True, exist_ok=True)
    cache = Cache(work / "cache.json", {"geometry": args.geometry, "n": args.n})
    if not cache.data["values"] and args.results and args.results.exists():
        cache.resume_from(args.results)
    all_cases = sensitivity_cases(load_geometry(args.geometry))
    wanted = None if not args.cases else {c.strip() for c in args.cases.split(",")}
    chosen = [c for c in all_cases if wanted is None or c.name in wanted or c.family in wanted]
    if not args.tables_only:
        ref_sample = open_sample(sample_file(work, args.geometry, args.n, REFERENCE_SEED), args.geometry, "reference")
        ref = compute_observables(ref_sample, low_level_rows=np.arange(args.n) if "low" in kinds else None)
        for seed in NULL_SEEDS:
            sample = open_sample(sample_file(work, args.geometry, args.n, seed), args.geometry, f"null seed {seed}")
            measure("null", f"seed{seed}", sample, ref, cache, kinds, args.classifier_seeds)
        for case in chosen:
            for seed in DISTORTED_SEEDS[:args.samples]:
                base = open_sample(sample_file(work, args.geometry, args.n, seed), args.geometry, f"seed {seed}")
                measure(case.name, f"seed{seed}", DistortedSample(base, case.apply, case.name), ref, cache, kinds,
                        args.classifier_seeds)
    summary = summarise_cases(cache, [c.name for c in all_cases])
    result = {"settings": {"geometry": args.geometry, "n": args.n, "classifier_seeds": args.classifier_seeds,
                           "command": " ".join(sys.argv)},
              "summary": summary, "detection": detection_limits(summary, all_cases), "values": cache.data["values"]}
    print(markdown(result))
    if args.results:
        args.results.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, all_cases, args.plot)


if __name__ == "__main__":
    main()
