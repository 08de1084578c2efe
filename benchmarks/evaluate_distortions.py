"""The evaluation on stand-in ds3 showers: a reference (seed 1) against an independent sample (seed 2)
and against three deliberate distortions of it; writes docs/evaluation_example/.

    .venv/bin/python benchmarks/evaluate_distortions.py [--n 10000] [--workdir /tmp/evaldist]
        [--docs docs/evaluation_example] [--example "energy x1.05"] [--quick] [--reuse]

Cases: independent sample; every voxel energy x 1.05; showers moved one radial bin outwards;
layers permuted. Each is a full evaluation (``pipeline.evaluation.runner.evaluate_samples``) with
reports under --workdir/<case>; the distortions are applied while reading, so only the two
simulated HDF5 files are written. Writes ``<docs>/distortions.md`` (one row per case) and copies
the --example case's report.md and a few of its plots into --docs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_tools.simulate import simulate_file
from pipeline.data.samples import Sample, open_sample
from pipeline.evaluation import distortions
from pipeline.evaluation.classifier import ClassifierConfig
from pipeline.evaluation.distortions import DistortedSample
from pipeline.evaluation.observables import compute_observables, voxel_log_edges
from pipeline.evaluation.plots import write_plots
from pipeline.evaluation.report import plus_minus, write_markdown
from pipeline.evaluation.runner import EvalOptions, energy_binned, evaluate_samples, separations
from pipeline.evaluation.separation import compare_grouped_counts

EXAMPLE_PLOTS = ("average_shower.png", "profiles.png", "hist_etot_voxel.png", "energy_bins.png", "hist_e_layer.png",
                 "hist_width_x.png", "separation_by_layer.png")


def cases(gen: Sample) -> dict[str, Sample]:
    return {
        "independent": gen,
        "energy x1.05": DistortedSample(gen, lambda s, a, g: distortions.scale_energy(s, 1.05), "energy x1.05"),
        "radial shift": DistortedSample(gen, lambda s, a, g: distortions.shift_radial(s, g, 1), "radial shift +1 bin"),
        "layers shuffled": DistortedSample(gen, lambda s, a, g: distortions.shuffle_layers(s, g, 0), "layers shuffled"),
    }


def replot(gen: Sample, ref: Sample, out: Path) -> None:
    """The plots of a report again (observables only, no classifiers)."""
    g, r = compute_observables(gen), compute_observables(ref)
    seps = separations(g, r, 50)
    seps["voxel"] = compare_grouped_counts(g.voxel_groups, r.voxel_groups, voxel_log_edges())
    write_plots(g, r, seps, energy_binned(g, r, 50)[1], out)


def row(name: str, r: dict) -> str:
    sp = r["separation_power"]["summary"]

    def ratio(key: str) -> str:
        s = sp[key]
        v, f = (s["value"], s["floor"]) if "value" in s else (s["mean"], s["floor_mean"])
        return f"{v:.3g} ({v / f:.1f})"

    cls, pd = r["classifier"], r["physics_distance"]
    return " | ".join([name, ratio("etot_einc"), ratio("voxel"), ratio("e_layer"), ratio("width_x"), ratio("sparsity"),
                       f"{cls['low']['auc']:.3f}", f"{cls['high']['auc']:.3f}",
                       plus_minus(pd["fpd"]["value"], pd["fpd"]["error"], 1e3),
                       plus_minus(pd["kpd"]["value"], pd["kpd"]["error"], 1e3)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/evaldist"))
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "evaluation_example")
    p.add_argument("--example", default="energy x1.05")
    p.add_argument("--quick", action="store_true", help="the quick classifier instead of the CaloChallenge protocol")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reuse", action="store_true",
                   help="reuse reports already in --workdir (re-render them and the example's plots)")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, seed in (("ref", 1), ("gen", 2)):
        paths[role] = args.workdir / f"{role}_seed{seed}_ds3_{args.n}.hdf5"
        if not paths[role].exists():
            simulate_file(paths[role], "ds3", args.n, seed, workers=args.workers)
    ref, gen = open_sample(paths["ref"], "ds3", "reference"), open_sample(paths["gen"], "ds3", "generated")
    opts = EvalOptions(classifier=ClassifierConfig.quick() if args.quick else ClassifierConfig())
    rows = []
    for name, sample in cases(gen).items():
        t0 = time.perf_counter()
        out = args.workdir / name.replace(" ", "_")
        if args.reuse and (out / "report.json").is_file():
            report = json.loads((out / "report.json").read_text())
            write_markdown(report, out / "report.md")
            if name == args.example:
                replot(sample, ref, out)
        else:
            report = evaluate_samples(sample, ref, opts, out)
        rows.append(row(name, report))
        print(f"{name}: {time.perf_counter() - t0:.0f} s | {rows[-1]}", flush=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    header = ("| generated sample | S(E_tot/E_inc) | S(voxel spectrum) | S(E layer), mean | S(width x), mean | "
              "S(sparsity), mean | AUC low | AUC high | FPD x1e3 | KPD x1e3 |\n|" + "---|" * 10)
    text = [f"# Metrics against distortions (stand-in ds3, {args.n} vs {args.n} showers)", "",
            "Reference: simulator seed 1; generated: simulator seed 2, as is or distorted while read "
            "(`benchmarks/evaluate_distortions.py`). Separation powers S with S / noise floor in parentheses "
            "(~1: no visible difference).", "", header] + ["| " + r + " |" for r in rows]
    (args.docs / "distortions.md").write_text("\n".join(text) + "\n")
    src = args.workdir / args.example.replace(" ", "_")
    for name in EXAMPLE_PLOTS:
        shutil.copy(src / name, args.docs / name)
    md = (src / "report.md").read_text().replace(str(args.workdir) + "/", "")
    md = "\n".join(line for line in md.splitlines()
                   if not (m := re.match(r"!\[(.+)\]\(", line)) or m.group(1) in EXAMPLE_PLOTS)
    (args.docs / "report.md").write_text(md + "\n")
    print(f"wrote {args.docs}")


if __name__ == "__main__":
    main()
