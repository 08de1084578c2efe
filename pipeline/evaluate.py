"""Compare a generated shower sample with a reference sample using the CaloChallenge metrics.

    python -m pipeline.evaluate --generated G.hdf5 --reference R.hdf5|R.zarr --geometry ds3 --out DIR

Either sample may be a CaloChallenge HDF5 file or a zarr store of the same geometry. Writes
``DIR/report.json`` (every number), ``DIR/report.md`` (summary tables beside the published
results) and PNG plots. Memory: the samples are streamed in blocks; the per-shower high-level
features (~2.2 kB per shower) and the low-level classifier's sparse subsample
(``--classifier-max`` showers per sample, ~6 bytes per non-zero voxel) stay in memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from data_tools.calochallenge_hdf5 import InputError
from pipeline.evaluation.classifier import ClassifierConfig
from pipeline.evaluation.runner import EvalOptions, evaluate_samples
from pipeline.evaluation.samples import open_sample
from pipeline.geometry import GEOMETRY_FILES


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--generated", required=True, help="generated sample (CaloChallenge HDF5 or zarr store)")
    p.add_argument("--reference", required=True, help="reference sample (CaloChallenge HDF5 or zarr store)")
    p.add_argument("--geometry", choices=sorted(GEOMETRY_FILES), help="default: from the store or the voxel count")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--bins", type=_positive, default=50, help="histogram bins of the separation powers (default 50)")
    p.add_argument("--classifiers", default="low,high", help="comma list of low, high, or 'none' (default low,high)")
    p.add_argument("--classifier-max", type=_positive, default=50_000,
                   help="showers per sample in the low-level classifier (held as sparse rows; default 50000)")
    p.add_argument("--classifier-runs", type=_positive, default=1, help="repeated seeded runs -> mean and spread")
    p.add_argument("--classifier-epochs", type=_positive, default=50, help="maximum epochs (early stopping)")
    p.add_argument("--classifier-patience", type=_positive, default=5)
    p.add_argument("--classifier-batch", type=_positive, default=1000)
    p.add_argument("--classifier-lr", type=float, default=2e-4)
    p.add_argument("--classifier-dropout", type=float, default=0.2)
    p.add_argument("--no-physics-distances", action="store_true", help="skip FPD and KPD")
    p.add_argument("--fpd-batches", type=_positive, default=20)
    p.add_argument("--kpd-batch", type=_positive, default=5000)
    p.add_argument("--kpd-degree", type=_positive, default=3, help="polynomial kernel degree (JetNet's code: 4)")
    p.add_argument("--normalisation", choices=("standardise", "maxabs"), default="standardise",
                   help="feature scaling of FPD/KPD, fixed by the reference (JetNet: maxabs)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--device", default="auto", help="classifier device: auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=_positive, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    names = tuple(c.strip() for c in args.classifiers.split(",") if c.strip() and c.strip() != "none")
    unknown = set(names) - {"low", "high"}
    if unknown:
        raise SystemExit(f"--classifiers: unknown {sorted(unknown)}; use low, high or none")
    cls = ClassifierConfig(dropout=args.classifier_dropout, lr=args.classifier_lr, batch_size=args.classifier_batch,
                           max_epochs=args.classifier_epochs, patience=args.classifier_patience,
                           runs=args.classifier_runs, seed=args.seed, device=args.device)
    return EvalOptions(bins=args.bins, classifiers=names, classifier_max=args.classifier_max, classifier=cls,
                       physics_distances=not args.no_physics_distances, fpd_batches=args.fpd_batches,
                       kpd_batch=args.kpd_batch, kpd_degree=args.kpd_degree, normalisation=args.normalisation,
                       plots=not args.no_plots, progress=not args.quiet, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = options_from_args(args)
    try:
        generated = open_sample(args.generated, args.geometry, "generated")
        reference = open_sample(args.reference, args.geometry, "reference")
        report = evaluate_samples(generated, reference, opts, args.out)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cls, pd = report["classifier"], report.get("physics_distance")
    line = [f"E_tot/E_inc separation {report['separation_power']['summary']['etot_einc']['value']:.3g}"]
    line += [f"AUC {k} {v['auc']:.3f}" for k, v in cls.items()]
    if pd:
        line += [f"{k.upper()} x 1e3 = {pd[k]['value'] * 1e3:.3g} ± {pd[k]['error'] * 1e3:.2g}" for k in ("fpd", "kpd")]
    print("; ".join(line))
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
