"""report.md: the evaluation's numbers as readable tables, beside the published CaloChallenge results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.evaluation.observables import FAMILIES

FAMILY_TITLES = {
    "e_layer": "energy per layer", "ec_x": "centre of energy x", "ec_y": "centre of energy y",
    "width_x": "width x", "width_y": "width y", "sparsity": "sparsity per layer",
}


def _f(x: Any, digits: int = 3) -> str:
    """``digits`` decimals from 0.1 to 1e4, else ``digits`` significant digits."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if x == 0 or 0.1 <= abs(x) < 1e4 else f"{x:.{digits}g}"
    return str(x)


def _div(a: Any, b: Any) -> float | None:
    return a / b if a is not None and b and math.isfinite(a) and math.isfinite(b) else None


def plus_minus(value: Any, error: Any, scale: float = 1.0, digits: int = 3) -> str:
    """``value ± error``, both rounded to the error's second significant digit."""
    if value is None:
        return "-"
    if error is None or not math.isfinite(error) or error <= 0:
        return _f(value * scale, digits)
    d = max(0, 1 - math.floor(math.log10(error * scale)))
    return f"{value * scale:.{d}f} ± {error * scale:.{d}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _auc_reading(name: str, result: dict[str, Any], published: list[dict], key: str) -> str:
    a, s0 = result["auc"], result["auc_null_std"]
    text = f"- AUC {name} = {a:.3f}: "
    if abs(a - 0.5) < 3 * s0:
        text += f"within 3 sigma_0 = {3 * s0:.3f} of 0.5, i.e. not distinguishable from the reference at this test size"
    else:
        text += f"{(a - 0.5) / s0:.0f} sigma_0 from 0.5, the classifier tells the samples apart"
    models = [r for r in published if not str(r["model"]).startswith("Geant4")]
    if models:
        better = sum(a < r[key] for r in models)
        text += f"; lower (better) than {better} of {len(models)} published models"
    return text + "."


def headline(report: dict[str, Any]) -> list[str]:
    cls, pdist, published = report.get("classifier", {}), report.get("physics_distance"), report.get("published", [])
    low, high = cls.get("low"), cls.get("high")
    this = ["**this evaluation**",
            plus_minus(low["auc"], low.get("auc_std")) if low else "-", plus_minus(high["auc"], high.get("auc_std")) if high else "-",
            plus_minus(pdist["fpd"]["value"], pdist["fpd"]["error"], 1e3) if pdist else "-",
            plus_minus(pdist["kpd"]["value"], pdist["kpd"]["error"], 1e3) if pdist else "-"]
    rows = [this] + [[str(r["model"]), _f(r["auc_low"]), _f(r["auc_high"]), _f(r["fpd_x1e3"]), _f(r["kpd_x1e3"])]
                     for r in published]
    lines = ["## Headline metrics", ""]
    lines += _table(["sample", "AUC low-level", "AUC high-level", "FPD x 1e3", "KPD x 1e3"], rows)
    if not published:
        lines += ["", f"(No published CaloChallenge results for {report['geometry']} in this project.)"]
    else:
        lines += ["", "Published rows: CaloChallenge 2022 final results (Geant4 vs model, 0.5 = indistinguishable). "
                  "They used other sample sizes and the JetNet FPD/KPD code (max-abs normalisation, KPD kernel degree 4); "
                  "compare the order of magnitude, not the third digit."]
    lines.append("")
    for name, key, res in (("low-level", "auc_low", low), ("high-level", "auc_high", high)):
        if res:
            lines.append(_auc_reading(name, res, published, key))
    lines.append(_separation_reading(report["separation_power"]["observables"]))
    return lines


def _separation_reading(observables: dict[str, Any], threshold: float = 3.0) -> str:
    ratios = {k: _div(v.get("value"), v.get("floor")) for k, v in observables.items()}
    above = sorted(((r, k) for k, r in ratios.items() if r is not None and r > threshold), reverse=True)
    text = f"- Histograms: {len(above)} of {len(observables)} observables differ by more than {threshold:g} x their noise floor"
    return text + (": " + ", ".join(f"{k} ({r:.0f}x)" for r, k in above[:5]) + "." if above else ".")


def separation_table(summary: dict[str, Any]) -> list[str]:
    rows = []
    for name, title in (("etot_einc", "E_tot / E_inc"), ("voxel", "voxel-energy spectrum")):
        if name in summary:
            s = summary[name]
            ratio = _div(s.get("value"), s.get("floor"))
            rows.append([title, _f(s["value"]), "-", _f(s["floor"]), _f(ratio, 2)])
    for family in FAMILIES:
        s = summary.get(family)
        if s:
            ratio = _div(s.get("mean"), s.get("floor_mean"))
            rows.append([FAMILY_TITLES[family] + f" ({s['n']} layers)", _f(s["mean"]), f"{_f(s['max'])} ({s['max_at']})",
                         _f(s["floor_mean"]), _f(ratio, 2)])
    return _table(["observable", "separation power (mean)", "max (where)", "noise floor", "mean / floor"], rows)


def largest_discrepancies(observables: dict[str, Any], k: int = 8) -> list[str]:
    """The ``k`` observables furthest above their noise floor."""
    ranked = sorted(((v["value"] / v["floor"], name, v) for name, v in observables.items()
                     if v.get("value") is not None and v.get("floor")), reverse=True)[:k]
    rows = [[name, _f(v["value"]), _f(v["floor"]), _f(r, 3)] for r, name, v in ranked]
    return _table(["observable", "separation power", "noise floor", "S / floor"], rows)


def energy_table(bins: list[dict[str, Any]]) -> list[str]:
    rows = []
    for b in bins:
        sp = b.get("separation_power", {})
        rg, rr = b["response_generated"], b["response_reference"]
        rows.append([b["label"], str(b["n_generated"]), str(b["n_reference"]), f"{_f(rg['mean'])} / {_f(rr['mean'])}",
                     f"{_f(rg['std'])} / {_f(rr['std'])}",
                     f"{_f(sp.get('etot_einc', {}).get('value'))} ({_f(sp.get('etot_einc', {}).get('floor'))})",
                     _f(sp.get("e_layer", {}).get("mean")), _f(sp.get("width_x", {}).get("mean")),
                     _f(sp.get("sparsity", {}).get("mean"))])
    return _table(["E_inc", "N gen", "N ref", "<E_tot/E_inc> gen / ref", "std gen / ref", "S(E_tot/E_inc) (floor)",
                   "S(E layer) mean", "S(width x) mean", "S(sparsity) mean"], rows)


def classifier_protocol_lines(cls: dict[str, Any]) -> list[str]:
    """How the classifiers were trained: the CaloChallenge protocol (and where this code deviates) or quick."""
    protocols = {res.get("protocol", "calochallenge") for res in cls.values()}
    lines = []
    if "calochallenge" in protocols:
        deviations = next(res.get("deviations", []) for res in cls.values() if res.get("protocol", "calochallenge")
                          == "calochallenge")
        lines += ["**Protocol: CaloChallenge** (its evaluate.py): DNN 3 x 512 (LeakyReLU, no dropout), BCE, Adam lr 2e-4, "
                  "batch 1000, 50 epochs, the epoch with the best validation accuracy kept; isotonic calibration on the "
                  "validation split; AUC and JSD = (ln 2 - BCE)/ln 2 on the held-out test split. Deviations:", ""]
        lines += [f"- {d}" for d in deviations] + [""]
    if "quick" in protocols:
        lines += ["**Protocol: quick** (`--classifier-quick`): dropout 0.2, early stopping on the validation loss, "
                  "standardised inputs. Faster and weaker than the challenge's classifier: its AUCs are not comparable "
                  "with published numbers.", ""]
    lines += ["sigma_0: spread of the AUC of a useless classifier on this test split. The high-level inputs are the "
              "challenge's (layer energies, centres and widths; E_tot only implicitly): an overall energy-scale error "
              "shows first in S(E_tot/E_inc) and the voxel spectrum.", ""]
    return lines


def classifier_table(cls: dict[str, Any]) -> list[str]:
    rows = []
    for name, res in cls.items():
        runs = res["runs"]
        rows.append([name, res.get("protocol", "calochallenge"), str(res["n_features"]),
                     plus_minus(res["auc"], res.get("auc_std")), _f(res["auc_raw"]),
                     plus_minus(res["jsd"], res.get("jsd_std")), _f(res["accuracy"]), str(len(runs)),
                     ", ".join(f"{r['best_epoch']}/{r['epochs']}" for r in runs), str(runs[0]["n_test"]),
                     _f(res["auc_null_std"])])
    lines = _table(["classifier", "protocol", "inputs", "AUC (calibrated)", "AUC (raw score)", "JSD", "accuracy", "runs",
                    "best/last epoch", "test showers", "sigma_0 of AUC"], rows)
    mem = cls.get("low", {}).get("memory")
    if mem:
        lines += ["", f"Low-level classifier: {mem['showers_per_sample']} showers per sample held as sparse rows, "
                  f"{mem['sparse_bytes'] / 2**20:.0f} MiB (dense float32 would be {mem['dense_equivalent_bytes'] / 2**20:.0f} MiB); "
                  f"one dense batch {mem['dense_batch_bytes'] / 2**20:.0f} MiB."]
    return lines


def render(report: dict[str, Any]) -> str:
    g, r = report["inputs"]["generated"], report["inputs"]["reference"]
    lines = [f"# Evaluation: generated vs reference ({report['geometry']})", ""]
    lines += _table(["", "path", "kind", "showers"], [[k, f"`{v['path']}`", v["kind"], str(v["n"])]
                                                     for k, v in (("generated", g), ("reference", r))])
    lines += ["", f"Voxels below {report['threshold_mev'] * 1e3:.2f} keV are set to zero in both samples first.",
              f"Mean E_tot/E_inc: generated {_f(report['response']['generated']['mean'], 4)}, "
              f"reference {_f(report['response']['reference']['mean'], 4)}.", ""]
    kept = report.get("generated_features_kept")
    if kept is not None and kept < g["n"]:
        lines += [f"Separation powers, responses and profiles use all {g['n']} generated showers; "
                  f"the high-level classifier and FPD/KPD use a random {kept} of them (as many as "
                  f"the reference).", ""]
    lines += headline(report) + [""]
    lines += ["## Separation power", "",
              "0.5 sum (p - q)^2 / (p + q) over normalised bins fixed by the reference (equal bins between its 0.1% "
              "and 99.9% quantiles, log bins for energies, plus under/overflow). The noise floor is the value expected "
              "for two samples of one distribution of these sizes: mean / floor near 1 means no visible difference.", ""]
    lines += separation_table(report["separation_power"]["summary"]) + [""]
    lines += ["Largest discrepancies (S / floor well above 1: a difference this sample size resolves):", ""]
    lines += largest_discrepancies(report["separation_power"]["observables"]) + [""]
    lines += ["## Incident-energy bins", ""] + energy_table(report["energy_bins"]) + [""]
    if report.get("classifier"):
        lines += ["## Classifiers", ""] + classifier_protocol_lines(report["classifier"]) + [""]
        lines += classifier_table(report["classifier"]) + [""]
    pd = report.get("physics_distance")
    if pd:
        lines += ["## Physics distances", "",
                  f"On {pd['features']} high-level features ({pd['normalisation']}d by the reference). FPD extrapolated to "
                  f"N = inf from sizes {pd['fpd']['sizes'][0]}-{pd['fpd']['sizes'][-1]}; KPD: median of unbiased MMD^2 "
                  f"over batches of {pd['kpd']['batch_size']}.", "",
                  f"- FPD = {plus_minus(pd['fpd']['value'], pd['fpd']['error'], 1e3)} x 1e-3",
                  f"- KPD = {plus_minus(pd['kpd']['value'], pd['kpd']['error'], 1e3)} x 1e-3", ""]
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    t = report.get("timing", {})
    lines += ["## Run", "", ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items())
              + f"; peak memory {report['memory']['peak_rss_mb']:.0f} MB.", ""]
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], path: Path) -> Path:
    path.write_text(render(report))
    return path
