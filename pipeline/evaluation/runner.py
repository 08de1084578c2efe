"""The whole evaluation of a generated sample against a reference sample -> report dict (+ files)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.samples import Sample, check_compatible
from pipeline.evaluation.classifier import (
    ClassifierConfig,
    DenseFeatures,
    LowLevelFeatures,
    classifier_test,
)
from pipeline.evaluation.observables import (
    FAMILIES,
    SampleObservables,
    compute_observables,
    radial_profile,
    voxel_log_edges,
)
from pipeline.evaluation.physics_distance import fpd, kpd
from pipeline.evaluation.published import published_rows
from pipeline.evaluation.separation import (
    N_BINS,
    Separation,
    compare,
    compare_grouped_counts,
    family_summary,
)
from pipeline.evaluation.streamed_histograms import GeneratedHistograms, response
from pipeline.runtime.memory import peak_rss_mb


@dataclass
class EvalOptions:
    """Settings of one evaluation (the CLI's options)."""

    bins: int = N_BINS
    classifiers: tuple[str, ...] = ("low", "high")
    classifier_max: int = 50_000  #: showers per sample in the low-level classifier's in-memory subsample
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    physics_distances: bool = True
    fpd_min_n: int = 20_000
    fpd_max_n: int = 50_000
    fpd_batches: int = 20
    fpd_points: int = 10
    kpd_batch: int = 5_000
    kpd_batches: int = 10
    kpd_degree: int = 3
    normalisation: str = "standardise"
    plots: bool = True
    dpi: int = 80
    progress: bool = True
    block_rows: int | None = None
    seed: int = 0


def separations(gen: SampleObservables, ref: SampleObservables, bins: int) -> dict[str, Separation]:
    """Separation power of every per-shower observable (both samples' features in memory)."""
    g_obs, r_obs = gen.hlf.observables(), ref.hlf.observables()
    return {name: compare(g_obs[name][0], values, scale, bins) for name, (values, scale) in r_obs.items()}


def summarise(seps: dict[str, Separation]) -> dict[str, Any]:
    out: dict[str, Any] = {name: seps[name].to_dict() for name in ("etot_einc", "voxel") if name in seps}
    for family in FAMILIES:
        out[family] = family_summary(seps, family)
    return out


def energy_binned(gen: SampleObservables, ref: SampleObservables,
                  bins: int) -> tuple[list[dict], list[dict | None]]:
    """Per incident-energy bin: sizes, response and separation powers (None where too few
    showers), from both samples' features in memory."""
    hist = GeneratedHistograms(ref, bins)
    hist.add(gen.hlf)
    return _with_summaries(*hist.energy_binned())


def _with_summaries(rows: list[dict],
                    seps: list[dict | None]) -> tuple[list[dict], list[dict | None]]:
    for entry, s in zip(rows, seps):
        if s is not None:
            entry["separation_power"] = summarise(s)
    return rows, seps


def profiles(gen: SampleObservables, ref: SampleObservables) -> dict[str, Any]:
    """Mean energy per layer and per radial bin (the profile plots' numbers)."""
    out: dict[str, Any] = {"layers": ref.hlf.layers}
    for role, o in (("generated", gen), ("reference", ref)):
        radius, energy = radial_profile(o)
        out[role] = {"mean_energy_per_layer_mev": o.mean_layer_energy.tolist(),
                     "mean_energy_per_radial_bin_mev": energy.tolist()}
        out["radial_bin_centres_mm"] = radius.tolist()
    return out


def _subsample_rows(n: int, m: int, seed: int, which: int) -> np.ndarray:
    return np.sort(np.random.default_rng([seed, which, 0x10E]).choice(n, size=m, replace=False))


def evaluate_samples(generated: Sample, reference: Sample, opts: EvalOptions, out: Path | None = None) -> dict[str, Any]:
    """Run the evaluation; with ``out``, write report.json, report.md and the plots there."""
    check_compatible(generated, reference)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    low = "low" in opts.classifiers
    m_low = min(generated.n, reference.n, opts.classifier_max) if low else 0
    low_rows = [_subsample_rows(s.n, m_low, opts.seed, which) if low else None
                for which, s in enumerate((generated, reference))]
    ref = compute_observables(reference, low_level_rows=low_rows[1], block_rows=opts.block_rows,
                              progress=opts.progress)
    timing["observables_reference_s"] = ref.seconds
    # the generated sample is streamed into the reference's binnings; its per-shower features are
    # kept for as many showers as the reference has (the classifier and FPD/KPD subsample), so
    # memory does not grow with N
    hist = GeneratedHistograms(ref, opts.bins)
    kept = (_subsample_rows(generated.n, reference.n, opts.seed, 2)
            if generated.n > reference.n else None)
    gen = compute_observables(generated, low_level_rows=low_rows[0], block_rows=opts.block_rows,
                              progress=opts.progress, hlf_rows=kept, on_block=hist.add)
    timing["observables_generated_s"] = gen.seconds
    t = time.perf_counter()
    seps = hist.separations()
    seps["voxel"] = compare_grouped_counts(gen.voxel_groups, ref.voxel_groups, voxel_log_edges(), opts.bins)
    binned, binned_seps = _with_summaries(*hist.energy_binned())
    timing["separation_s"] = time.perf_counter() - t
    g = reference.geometry
    report: dict[str, Any] = {
        "geometry": g.name, "threshold_mev": g.threshold_mev,
        "inputs": {"generated": generated.describe(), "reference": reference.describe()},
        "settings": {k: v for k, v in asdict(opts).items() if k != "classifier"} | {"classifier": asdict(opts.classifier)},
        "response": {"generated": hist.response.to_dict(), "reference": response(ref.hlf)},
        "generated_features_kept": gen.hlf.n,
        "separation_power": {"summary": summarise(seps), "observables": {k: v.to_dict(True) for k, v in seps.items()}},
        "profiles": profiles(gen, ref),
        "energy_bins": binned,
        "classifier": {},
    }
    if "high" in opts.classifiers:
        t = time.perf_counter()
        report["classifier"]["high"] = classifier_test(DenseFeatures(gen.hlf.classifier_features()),
                                                       DenseFeatures(ref.hlf.classifier_features()),
                                                       opts.classifier, "high-level classifier", opts.progress)
        timing["classifier_high_s"] = time.perf_counter() - t
    if low:
        t = time.perf_counter()
        feats = [LowLevelFeatures(o.low_level, o.low_level_energies) for o in (gen, ref)]
        result = classifier_test(feats[0], feats[1], opts.classifier, "low-level classifier", opts.progress)
        batch = result["runs"][0]["batch_size"]
        result["memory"] = {"showers_per_sample": m_low, "sparse_bytes": int(sum(f.voxels.nbytes for f in feats)),
                            "dense_batch_bytes": int(batch * feats[0].n_features * 4),
                            "dense_equivalent_bytes": int(2 * m_low * g.n_voxels * 4)}
        report["classifier"]["low"] = result
        timing["classifier_low_s"] = time.perf_counter() - t
    if opts.physics_distances:
        t = time.perf_counter()
        xr, xg = ref.hlf.classifier_features(), gen.hlf.classifier_features()
        report["physics_distance"] = {
            "features": int(xr.shape[1]), "normalisation": opts.normalisation,
            "fpd": fpd(xr, xg, min_n=opts.fpd_min_n, max_n=opts.fpd_max_n, batches=opts.fpd_batches,
                       points=opts.fpd_points, seed=opts.seed + 42, how=opts.normalisation),
            "kpd": kpd(xr, xg, batch_size=opts.kpd_batch, batches=opts.kpd_batches, degree=opts.kpd_degree,
                       seed=opts.seed + 42, how=opts.normalisation),
        }
        timing["physics_distance_s"] = time.perf_counter() - t
    report["published"] = published_rows(g.name)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if opts.plots:
            t = time.perf_counter()
            from pipeline.evaluation.plots import write_plots

            report["plots"] = [p.name for p in write_plots(gen, ref, seps, binned_seps, out, opts.dpi)]
            timing["plots_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t0
    report["timing"] = timing
    report["memory"] = {"peak_rss_mb": peak_rss_mb()}
    if out is not None:
        from pipeline.evaluation.report import write_markdown

        write_markdown(report, out / "report.md")
        # report.json last and atomically: it is the evaluation stage's completion marker
        tmp = out / "report.json.tmp"
        tmp.write_text(json.dumps(clean_json(report), indent=1))
        os.replace(tmp, out / "report.json")
    return report


def clean_json(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so report.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
