"""Compare a generated shower sample with a reference sample using the CaloChallenge metrics.

    python -m pipeline.evaluate --generated G.hdf5 --reference R.hdf5|R.zarr --geometry ds3 --out DIR
    python -m pipeline.evaluate --config CFG [--set K=V] [options]

Either sample may be a CaloChallenge HDF5 file or a zarr store of the same geometry. Writes
``DIR/report.md`` (summary tables beside the published results), PNG plots and, last and
atomically, ``DIR/report.json`` (every number; the stage's completion marker).

With ``--config``: the generated sample is the export (``generate.export``) when it is one file that
exists, else the zarr sample (``generate.out``); the reference is ``evaluate.reference`` (a stand-in
reference, ``evaluate.reference_standin``, is simulated by the convert stage or the demo, not here);
DIR is ``evaluate.out``; the geometry is ``data.geometry``; ``evaluate.classifiers``,
``evaluate.classifier_protocol`` (calochallenge or quick), ``evaluate.classifier_epochs`` and
``evaluate.extra_args`` set the options. Options given on the command line override the config. A
finished evaluation (``report.json`` present) is skipped unless ``--overwrite``.

Memory: the samples are streamed in blocks, the generated one into histograms binned by the
reference (separation powers, responses and profiles use every generated shower). The per-shower
high-level features (~2.2 kB per shower) of the reference and of as many generated showers (a random
subsample when the generated sample is larger: the high-level classifier and FPD/KPD use no more)
and the low-level classifier's sparse subsample (``--classifier-max`` showers per sample, ~6 bytes
per non-zero voxel) stay in memory, so memory does not grow with the generated sample's size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from pipeline.config import Config, ConfigError, add_config_arguments, load_config
from pipeline.data import run_layout
from pipeline.data.calochallenge_hdf5 import InputError
from pipeline.data.sample_store import check_generation_complete
from pipeline.data.samples import open_sample
from pipeline.data.shower_store import StoreError
from pipeline.evaluation.classifier import protocol_config
from pipeline.evaluation.runner import EvalOptions, evaluate_samples
from pipeline.physics.geometry import GEOMETRY_FILES


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--generated", help="generated sample (CaloChallenge HDF5 or zarr store)")
    p.add_argument("--reference", help="reference sample (CaloChallenge HDF5 or zarr store)")
    p.add_argument("--geometry", choices=sorted(GEOMETRY_FILES), help="default: from the store or the voxel count")
    p.add_argument("--out", type=Path, help="output directory")
    p.add_argument("--bins", type=_positive, default=50, help="histogram bins of the separation powers (default 50)")
    p.add_argument("--classifiers", default="low,high", help="comma list of low, high, or 'none' (default low,high)")
    p.add_argument("--classifier-max", type=_positive, default=50_000,
                   help="showers per sample in the low-level classifier (held as sparse rows; default 50000)")
    p.add_argument("--classifier-runs", type=_positive, default=1,
                   help="repeated seeded runs (other splits and initialisations) -> mean and spread")
    p.add_argument("--classifier-quick", action="store_true",
                   help="the quick classifier (dropout 0.2, early stopping, standardised inputs) instead of the "
                        "CaloChallenge protocol; for smoke runs, named 'quick' in the report")
    p.add_argument("--classifier-epochs", type=_positive, help="epochs (protocol 50; quick: at most 20)")
    p.add_argument("--classifier-patience", type=_positive, help="stop after this many epochs without improvement "
                   "(protocol: none, every epoch runs; quick 3)")
    p.add_argument("--classifier-batch", type=_positive, help="batch size (default 1000)")
    p.add_argument("--classifier-lr", type=float, help="Adam learning rate (default 2e-4)")
    p.add_argument("--classifier-dropout", type=float, help="dropout (protocol 0; quick 0.2)")
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
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="with --config: evaluate again even when DIR/report.json exists")
    add_config_arguments(p, required=False)
    return p


def config_argv(cfg: Config, parser: argparse.ArgumentParser) -> list[str]:
    """The command-line options a config stands for (``evaluate.extra_args`` last)."""
    export = run_layout.export_path(cfg)
    generated = export if export.exists() else run_layout.sample_path(cfg)
    e = cfg.evaluate
    argv = ["--generated", str(generated), "--out", str(run_layout.evaluation_dir(cfg)), "--geometry", cfg.data.geometry,
            "--classifiers", e.classifiers]
    if e.classifier_epochs is not None:
        argv += ["--classifier-epochs", str(e.classifier_epochs)]
    if e.classifier_protocol == "quick":
        argv.append("--classifier-quick")
    if e.reference is not None:
        argv += ["--reference", e.reference]
    for key in ("--config", "--set", "--generated", "--reference", "--out"):
        if any(arg == key or arg.startswith(key + "=") for arg in e.extra_args):
            raise ConfigError(f"evaluate.extra_args: {key} cannot be set here (use the evaluate/generate keys)")
    _, unknown = parser.parse_known_args(list(e.extra_args))
    if unknown:
        raise ConfigError(f"evaluate.extra_args: unrecognised pipeline.evaluate arguments {unknown}")
    return argv + list(e.extra_args)


def missing_reference(cfg: Config) -> str:
    """The error for a configured reference that does not exist (stand-ins are simulated by the convert stage)."""
    e = cfg.evaluate
    if e.reference_standin is None:
        return f"evaluate.reference: {e.reference} does not exist (and evaluate.reference_standin is not set to simulate it)"
    return (f"evaluate.reference: {e.reference} does not exist yet; it is the stand-in reference "
            f"(evaluate.reference_standin), simulated by the convert stage (python -m data_tools.convert --config ...) "
            f"or the demo")


def parse_args(argv: Sequence[str] | None = None):
    """Parse the command line, filled in from ``--config`` where given: returns (args, config or None)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    cfg = None
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
        args = parser.parse_args([*config_argv(cfg, parser), *argv])  # the command line comes last: it wins
        if args.reference is None:
            parser.error("no reference sample: set evaluate.reference in the config or pass --reference")
    else:
        missing = [k for k in ("generated", "reference", "out") if getattr(args, k) is None]
        if missing:
            parser.error(f"the following arguments are required without --config: "
                         f"{', '.join('--' + k for k in missing)}")
        if args.overrides:
            parser.error("--set needs --config")
    return args, cfg


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    names = tuple(c.strip() for c in args.classifiers.split(",") if c.strip() and c.strip() != "none")
    unknown = set(names) - {"low", "high"}
    if unknown:
        raise SystemExit(f"--classifiers: unknown {sorted(unknown)}; use low, high or none")
    given = {field: value for field, value in (
        ("dropout", args.classifier_dropout), ("lr", args.classifier_lr), ("batch_size", args.classifier_batch),
        ("max_epochs", args.classifier_epochs), ("patience", args.classifier_patience)) if value is not None}
    given |= {"runs": args.classifier_runs, "seed": args.seed, "device": args.device}
    cls = protocol_config("quick" if args.classifier_quick else "calochallenge", **given)
    return EvalOptions(bins=args.bins, classifiers=names, classifier_max=args.classifier_max, classifier=cls,
                       physics_distances=not args.no_physics_distances, fpd_batches=args.fpd_batches,
                       kpd_batch=args.kpd_batch, kpd_degree=args.kpd_degree, normalisation=args.normalisation,
                       plots=not args.no_plots, progress=not args.quiet, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, cfg = parse_args(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report_file = args.out / "report.json"
    if cfg is not None and report_file.exists() and not args.overwrite:
        print(f"evaluate: {report_file} exists: this evaluation is finished (pass --overwrite to run it again)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = options_from_args(args)
    try:
        check_generation_complete(args.generated)
        generated = open_sample(args.generated, args.geometry, "generated")
        if cfg is not None and args.reference == cfg.evaluate.reference and not Path(args.reference).exists():
            raise InputError(missing_reference(cfg))
        reference = open_sample(args.reference, args.geometry, "reference")
        report_file.unlink(missing_ok=True)  # an interrupted re-run must not look finished
        report = evaluate_samples(generated, reference, opts, args.out)
    except (InputError, StoreError, OSError) as err:
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
