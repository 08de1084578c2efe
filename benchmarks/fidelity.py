"""Fidelity benchmark: the real stages (train -> distill -> generate -> evaluate) under wall-clock
budgets, and the learning curves and per-stage fidelity they reach.

    .venv/bin/python benchmarks/fidelity.py --config configs/fidelity_ds2_cpu.yaml \
        --train-minutes 50 --distill-minutes 5 [--threads 1] [--plot docs/fidelity_ds2.png] \
        [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/fidelity.py --config configs/fidelity_ds3_layers_cpu.yaml \
        --train-minutes 20 --distill-minutes 6 --plot docs/fidelity_ds3_layers.png
    python benchmarks/fidelity.py --config configs/fidelity_ds2_gpu.yaml --train-minutes 5 \
        --distill-minutes 1

Every stage is the project's own command in a subprocess (``data_tools.convert``,
``pipeline.train``, ``pipeline.distill --stage K``, ``pipeline.generate``, ``pipeline.evaluate``). A
training or distillation stage gets ``--time-limit`` = its budget; when the budget ends it first
(exit 75), the stage is closed at the step it reached (re-run with ``max_steps`` = that step: the
EMA export and ``DONE.json`` are written), so the next stage always has a finished teacher. A stage
with a ``DONE.json`` is skipped, so re-running resumes (and re-running with sampling-time overrides
such as ``--set sampling.clip_x=true --out fidelity_clip.json`` re-evaluates).

Then, for the teacher and every distillation stage (and with ``--undistilled`` the teacher sampled
with the last stage's steps: what distillation buys), from 2 generation seeds (independent samples),
one shower or set of layer energies per reference incident energy:

- whole model (``train.networks`` has ``voxels``): ``pipeline.generate`` and ``pipeline.evaluate``
  of each sample (AUC low/high with 3 classifier seeds: mean +- std over the 6; FPD, KPD and
  separation powers averaged over the 2 samples), with the generation ms per shower;
- layer network alone (``train.networks: [layers]``): the layer energies its sampler makes (layers
  below the readout threshold zeroed), each compared with
  :func:`pipeline.evaluation.layer_fidelity.compare_layer_energies` (classifier AUC on
  ``(log E_inc, layer energies / E_inc, E_tot / E_inc)`` with 3 classifier seeds; E_tot/E_inc and
  layer separation powers);
- the null: the reference against an independent stand-in sample of the same size, measured the same
  way.

The training run's fidelity monitor (``logs/monitor.csv``) gives the curve during training. Writes
``<run.dir>/fidelity.json`` and prints the tables as markdown; ``--plot`` draws the curves.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import Config, load_config  # noqa: E402
from pipeline.data import run_layout  # noqa: E402
from pipeline.data.run_record import read_record  # noqa: E402
from pipeline.launch.plan import Stage, chain  # noqa: E402

CURVES = ("etot_einc", "e_layer", "width_x", "sparsity", "classifier_auc")


def command(args: argparse.Namespace, module: str | Stage, *extra: str) -> list[str]:
    """``python -m module`` (or a chain stage's command) with this config, ``extra`` and the
    ``--set`` overrides."""
    base = module.command(args.config, sys.executable) if isinstance(module, Stage) \
        else [sys.executable, "-m", module, "--config", args.config]
    return [*base, *extra, *(x for kv in args.set for x in ("--set", kv))]


def run(cmd: list[str], env: dict[str, str]) -> int:
    print(f"[fidelity] {' '.join(cmd[2:])}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def budgeted_stage(args: argparse.Namespace, env: dict[str, str], stage: Stage,
                   minutes: float) -> dict[str, Any]:
    """Run a training/distillation stage within ``minutes``; close it at the step reached if the
    budget ends it."""
    run_dir = stage.workdir
    assert run_dir is not None
    if stage.is_done():
        print(f"[fidelity] {run_dir}: already finished", flush=True)
        return {"seconds": None, "closed_early": None, **_done_summary(run_dir)}
    t0 = time.perf_counter()
    code = run(command(args, stage, "--time-limit", f"{minutes}m"), env)
    closed = False
    if code == 75:  # the budget ended it: finish at the step reached (EMA export, DONE.json)
        step = json.loads((run_dir / run_layout.REQUEUE_FILE).read_text())["step"]
        code = run(command(args, stage, "--set", f"{stage.kind}.max_steps={step}"), env)
        closed = True
    if code != 0:
        raise SystemExit(f"stage {stage.name} failed with exit code {code}")
    return {"seconds": time.perf_counter() - t0, "closed_early": closed, **_done_summary(run_dir)}


def _done_summary(run_dir: Path) -> dict[str, Any]:
    done = read_record(run_dir)
    assert done is not None
    return {"steps": done.step, "sample_steps": done.sample_steps, "run_dir": str(run_dir)}


def monitor_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "logs" / "monitor.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _evaluate(args: argparse.Namespace, env: dict[str, str], generated: Path,
              out: Path) -> dict[str, Any]:
    """``pipeline.evaluate`` of ``generated`` against the reference (:data:`CLASSIFIER_SEEDS`
    classifier runs); the numbers the tables show, with every classifier run's AUC."""
    if not (out / run_layout.REPORT_FILE).exists():
        code = run(command(args, "pipeline.evaluate", "--generated", str(generated),
                           "--out", str(out), "--quiet",
                           "--classifier-runs", str(CLASSIFIER_SEEDS)), env)
        if code != 0:
            raise SystemExit(f"pipeline.evaluate of {generated} failed with exit code {code}")
    report = json.loads((out / run_layout.REPORT_FILE).read_text())
    summary = report["separation_power"]["summary"]
    pd = report.get("physics_distance") or {}
    runs = {k: [r["auc"] for r in report["classifier"].get(k, {}).get("runs", [])]
            for k in ("low", "high")}
    return {"auc_low_runs": runs["low"], "auc_high_runs": runs["high"],
            "fpd": pd.get("fpd", {}).get("value"), "fpd_error": pd.get("fpd", {}).get("error"),
            "etot_einc": summary["etot_einc"]["value"], "e_layer": summary["e_layer"]["mean"],
            "width_x": summary["width_x"]["mean"], "sparsity": summary["sparsity"]["mean"],
            "report": str(out / "report.md")}


def _averaged(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The first result with every float replaced by its mean over ``results``."""
    return {k: (float(np.mean([r[k] for r in results])) if isinstance(v, float) else v)
            for k, v in results[0].items()}


def _with_auc_spread(out: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """``auc_low`` / ``auc_high`` as mean and standard deviation over every classifier run of
    ``results``."""
    for key in ("auc_low", "auc_high"):
        aucs = [auc for r in results for auc in r[key + "_runs"]]
        out[key] = float(np.mean(aucs)) if aucs else None
        out[key + "_std"] = float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None
    return out


def whole_model_fidelity(args: argparse.Namespace, cfg: Config, env: dict[str, str], stage: int,
                         work: Path, steps: int | None = None) -> dict[str, Any]:
    """Stage ``stage`` (sampled with ``steps``, default its own) generates one shower per reference
    energy with ``--generation-seeds`` generation seeds (default :data:`GENERATION_SEEDS`); each
    sample is evaluated by ``pipeline.evaluate``. AUCs: mean +- std over every (generation seed,
    classifier seed); the rest: mean over the samples, each under ``by_generation_seed``."""
    name = ("teacher" if stage == 0 else f"stage_{stage}") + (f"_{steps}_steps" if steps else "")
    results, ms = [], []
    for k in range(args.generation_seeds):
        seed = cfg.generate.seed + k
        sample = work / f"{name}_seed{seed}.zarr"
        if not run_layout.sample_manifest(sample).exists():
            extra = ["--set", f"generate.seed={seed}",
                     *(["--set", f"generate.sample_steps={steps}"] if steps else [])]
            code = run(command(args, "pipeline.generate",
                               "--model", "teacher" if stage == 0 else f"stage_{stage}",
                               "--out", str(sample), *extra), env)
            if code != 0:
                raise SystemExit(f"pipeline.generate of {sample} failed with exit code {code}")
        manifest = json.loads(run_layout.sample_manifest(sample).read_text())
        ms.append(manifest["timing"]["ms_per_shower_per_rank"])
        results.append({**_evaluate(args, env, sample, work / f"evaluation_{name}_seed{seed}"),
                        "showers": manifest["n"], "generation_seed": seed})
    out = _averaged(results)
    return {**_with_auc_spread(out, results), "ms_per_shower": float(np.mean(ms)),
            "by_generation_seed": results}


def whole_null(args: argparse.Namespace, cfg: Config, env: dict[str, str],
               work: Path) -> dict[str, Any]:
    """``pipeline.evaluate`` of an independent stand-in sample (:func:`null_sample`) against the
    reference."""
    path = null_sample(cfg)
    result = _evaluate(args, env, path, work / "evaluation_null")
    return {**_with_auc_spread(dict(result), [result]), "sample": str(path)}


GENERATION_SEEDS = 2  # independent generated samples per stage (generate.seed, generate.seed + 1)
CLASSIFIER_SEEDS = 3  # classifier runs per comparison


def _mean_over_seeds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers averaged over the generated samples; the classifier AUC as mean and standard
    deviation over every (generation seed, classifier seed) pair; every sample's own result under
    ``by_generation_seed``."""
    out = _averaged(results)
    aucs = [auc for r in results for auc in r["classifier_auc_runs"]]
    out.update(classifier_auc=float(np.mean(aucs)), classifier_auc_std=float(np.std(aucs, ddof=1)),
               classifier_runs=len(aucs), by_generation_seed=results)
    return out


def layer_network_fidelity(cfg: Config, stage: int, steps: int | None = None) -> dict[str, Any]:
    """Layer energies of stage ``stage``'s layer network (sampled with ``steps``, default its own)
    for the reference's incident energies, from :data:`GENERATION_SEEDS` generation seeds, against
    the reference (classifier AUC with :data:`CLASSIFIER_SEEDS` seeds each, separation powers), and
    the generation time per shower."""
    import torch

    from pipeline.evaluation.layer_fidelity import compare_layer_energies, reference_layer_energies
    from pipeline.generation.sampler import load_layer_sampler

    assert cfg.evaluate.reference is not None, \
        "evaluate.reference: the layer energies to compare with"
    sampler = load_layer_sampler(run_layout.distill_dir(cfg, stage), torch.device("cpu"),
                                 clip_x=cfg.sampling.clip_x)
    if steps:
        sampler = dataclasses.replace(sampler,
                                      layer=dataclasses.replace(sampler.layer, steps=steps))
    reference, energies = reference_layer_energies(cfg.evaluate.reference, cfg.data.geometry)
    results, seconds = [], 0.0
    for k in range(GENERATION_SEEDS):
        t0 = time.perf_counter()
        generated = sampler.sample(energies, cfg.generate.seed + k)
        seconds += time.perf_counter() - t0
        results.append({**compare_layer_energies(generated, reference, energies, energies,
                                                 classifier=_classifier(cfg)),
                        "generation_seed": cfg.generate.seed + k})
    return {**_mean_over_seeds(results),
            "ms_per_shower": 1e3 * seconds / (GENERATION_SEEDS * len(energies))}


def _classifier(cfg: Config) -> Any:
    from pipeline.evaluation.classifier import protocol_config

    return protocol_config(cfg.evaluate.classifier_protocol, cfg.evaluate.classifier_epochs,
                           runs=CLASSIFIER_SEEDS)


def null_sample(cfg: Config) -> Path:
    """A second stand-in sample of the reference's size, independent of it (simulated next to it
    with the reference's seed + 100): what identical distributions give."""
    from data_tools.simulate import simulate_file

    standin = cfg.evaluate.reference_standin
    assert cfg.evaluate.reference is not None and standin is not None, \
        "evaluate.reference_standin: the null needs it"
    path = Path(cfg.evaluate.reference).with_name(f"null_{Path(cfg.evaluate.reference).name}")
    if not path.exists():
        simulate_file(path, cfg.data.geometry, standin.n, seed=standin.seed + 100,
                      workers=standin.workers)
    return path


def layer_null(cfg: Config) -> dict[str, Any]:
    """The reference's layer energies against those of :func:`null_sample`, measured as a generated
    sample's."""
    from pipeline.evaluation.layer_fidelity import compare_layer_energies, reference_layer_energies

    reference, energies = reference_layer_energies(cfg.evaluate.reference, cfg.data.geometry)
    path = null_sample(cfg)
    other, other_energies = reference_layer_energies(path, cfg.data.geometry)
    result = compare_layer_energies(other, reference, other_energies, energies,
                                    classifier=_classifier(cfg))
    aucs = result["classifier_auc_runs"]
    return {**result, "classifier_auc": float(np.mean(aucs)),
            "classifier_auc_std": float(np.std(aucs, ddof=1)), "sample": str(path)}


def fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None or x == "" else f"{float(x):.{digits}f}"


def print_tables(result: dict[str, Any]) -> None:
    print("\nDuring training (fidelity monitor, EMA weights):\n")
    auc = "AUC (layer features)" if result["mode"] == "layers" else "AUC (high-level)"
    print(f"| step | E_tot/E_inc | layer energies | width x | sparsity | FPD | {auc} |")
    print("|---|---|---|---|---|---|---|")
    for r in result["curve"]:
        print(f"| {r['step']} | {fmt(r.get('etot_einc'))} | {fmt(r.get('e_layer'))} | "
              f"{fmt(r.get('width_x'))} | {fmt(r.get('sparsity'))} | {fmt(r.get('fpd'), 4)} | "
              f"{fmt(r.get('classifier_auc'))} |")
    print("\nPer stage:\n")
    columns = LAYER_COLUMNS if result["mode"] == "layers" else WHOLE_COLUMNS
    print("| stage | sampling steps | optimiser steps | stage minutes | "
          + " | ".join(c for c, _ in columns) + " |")
    print("|---" * (len(columns) + 4) + "|")
    for s in result["stages"]:
        cells = [str(s["stage"]), str(s["sample_steps"]), str(s["steps"]), fmt(_minutes(s), 1)]
        print("| " + " | ".join(cells + [cell(s["fidelity"]) for _, cell in columns]) + " |")
    if result.get("null"):
        print("| null: reference vs an independent sample | - | - | - | "
              + " | ".join(cell({**result["null"], "ms_per_shower": None}) for _, cell in columns)
              + " |")


def _pair(f: dict[str, Any], a: str, b: str, digits: int = 3, sep: str = " / ") -> str:
    return f"{fmt(f.get(a), digits)}{sep}{fmt(f.get(b), digits)}"


def _auc(key: str) -> Any:
    """A table cell: the AUC ``key`` as mean +- std."""
    return lambda f: fmt(f.get(key)) + (f" +- {fmt(f[key + '_std'])}"
                                        if f.get(key + "_std") is not None else "")


LAYER_COLUMNS = [
    ("classifier AUC (mean +- std)", _auc("classifier_auc")),
    ("E_tot/E_inc (floor)", lambda f: _pair(f, "etot_einc", "etot_einc_floor", sep=" (") + ")"),
    ("layer energies (floor)", lambda f: _pair(f, "e_layer", "e_layer_floor", sep=" (") + ")"),
    ("mean E_tot/E_inc gen / ref",
     lambda f: _pair(f, "response_generated", "response_reference", 4)),
    ("response wiggle", lambda f: fmt(f["response_wiggle"], 4)),
    ("E_tot > E_inc", lambda f: fmt(f["etot_above_einc"], 4)),
    ("empty layers gen / ref",
     lambda f: _pair(f, "empty_layers_generated", "empty_layers_reference")),
    ("ms per shower", lambda f: fmt(f["ms_per_shower"], 3)),
]
WHOLE_COLUMNS = [("AUC low (mean +- std)", _auc("auc_low")),
                 ("AUC high (mean +- std)", _auc("auc_high"))] + [
    (name, lambda f, k=key, d=digits: fmt(f.get(k), d)) for name, key, digits in (
        ("FPD", "fpd", 4), ("E_tot/E_inc", "etot_einc", 3), ("layer energies", "e_layer", 3),
        ("width x", "width_x", 3), ("sparsity", "sparsity", 3),
        ("ms per shower", "ms_per_shower", 1))]


def _minutes(stage: dict[str, Any]) -> float | None:
    """The stage's wall time: as measured, or (a stage finished by an earlier invocation) from its
    metrics log."""
    if stage["seconds"] is not None:
        return stage["seconds"] / 60
    path = Path(stage["run_dir"]) / "logs" / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("elapsed_s")]
    return float(rows[-1]["elapsed_s"]) / 60 if rows else None


def plot(result: dict[str, Any], path: Path) -> None:
    """Monitor curves of training (against optimiser steps; separations on a log scale with their
    noise floors) and the per-stage AUC and separations (against sampling steps)."""
    curve = result["curve"]
    names = [c for c in CURVES if any(r.get(c) not in (None, "") for r in curve)]
    aucs = ("classifier_auc",) if result["mode"] == "layers" else ("auc_low", "auc_high")
    fig, axes = plt.subplots(1, len(names) + 2, figsize=(3.4 * (len(names) + 2), 3.2))
    steps = [int(r["step"]) for r in curve]

    def values(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]

    for ax, name in zip(axes, names):
        ax.plot(steps, values(curve, name), "o-", ms=3)
        if any(r.get(name + "_floor") not in (None, "") for r in curve):
            ax.plot(steps, values(curve, name + "_floor"), "--", color="grey", label="noise floor")
            ax.legend(fontsize=7)
        ax.set_yscale("linear" if name == "classifier_auc" else "log")
        ax.set_title(f"training: {name}", fontsize=9)
        ax.set_xlabel("optimiser step", fontsize=8)
    stages = [s for s in result["stages"] if isinstance(s["stage"], int)]
    x = [s["sample_steps"] for s in stages]
    for ax, keys, title in ((axes[-2], aucs, "per stage: classifier AUC"),
                            (axes[-1], ("etot_einc", "e_layer"), "per stage: separation")):
        for key in keys:
            fids = [s["fidelity"] for s in stages]
            ax.errorbar(x, values(fids, key), yerr=[f.get(key + "_std") or 0.0 for f in fids],
                        fmt="o-", ms=3, capsize=3, label=key)
            null = (result.get("null") or {}).get(key)
            if null is not None:
                ax.axhline(null, color="grey", ls=":", lw=1, label=f"null {key}")
        ax.set_xscale("log", base=2)
        ax.invert_xaxis()
        ax.set_xlabel("sampling steps (teacher, then each stage)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    axes[-2].axhline(0.5, color="grey", lw=0.5)
    axes[-1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable)")
    p.add_argument("--train-minutes", type=float, default=60,
                   help="wall-clock budget of the training stage")
    p.add_argument("--distill-minutes", type=float, default=10,
                   help="wall-clock budget of each distillation stage")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every stage (CPU)")
    p.add_argument("--stages", type=int,
                   help="distillation stages to run (default: all the config has)")
    p.add_argument("--evaluate", type=int, nargs="+", metavar="K",
                   help="evaluate only these stages (0: teacher)")
    p.add_argument("--undistilled", action="store_true",
                   help="also evaluate the teacher sampled with the last stage's steps "
                        "(generate.sample_steps)")
    p.add_argument("--generation-seeds", type=int, default=GENERATION_SEEDS,
                   help="independent generated samples per stage (whole model)")
    p.add_argument("--no-null", action="store_true",
                   help="skip the null (reference against an independent sample)")
    p.add_argument("--plot", type=Path)
    p.add_argument("--out", default="fidelity.json",
                   help="result file in run.dir (default fidelity.json)")
    p.add_argument("--tables-only", action="store_true",
                   help="print the tables (and --plot) of the result file")
    args = p.parse_args()
    cfg = load_config(args.config, args.set)
    if args.tables_only:
        result = json.loads((run_layout.train_dir(cfg) / args.out).read_text())
        print_tables(result)
        if args.plot:
            plot(result, args.plot)
        return
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    mode = "whole" if "voxels" in cfg.train.networks else "layers"
    t0 = time.perf_counter()
    # the stages pipeline.launch and the demo run
    plan = {stage.name: stage for stage in chain(cfg)}
    if run(command(args, plan["convert"]), env) != 0:
        raise SystemExit("data_tools.convert failed")
    train_dir = run_layout.train_dir(cfg)
    stages = [{"stage": 0, **budgeted_stage(args, env, plan["train"], args.train_minutes)}]
    for k in range(1, (run_layout.n_stages(cfg) if args.stages is None else args.stages) + 1):
        stages.append({"stage": k, **budgeted_stage(args, env, plan[f"distill:{k}"],
                                                     args.distill_minutes)})
    work = train_dir / Path(args.out).stem  # samples and reports of this result file
    work.mkdir(parents=True, exist_ok=True)
    teacher = stages[0]
    stages = [s for s in stages if args.evaluate is None or s["stage"] in args.evaluate]
    for s in stages:
        s["fidelity"] = whole_model_fidelity(args, cfg, env, s["stage"], work) if mode == "whole" \
            else layer_network_fidelity(cfg, s["stage"])
        print(f"[fidelity] stage {s['stage']} ({s['sample_steps']} steps): {s['fidelity']}",
              flush=True)
    if args.undistilled:  # what distillation buys: the teacher with the final stage's steps
        final = run_layout.stage_steps(cfg, run_layout.n_stages(cfg))
        fidelity = whole_model_fidelity(args, cfg, env, 0, work, final) if mode == "whole" \
            else layer_network_fidelity(cfg, 0, final)
        stages.append({**teacher, "stage": "teacher, undistilled", "sample_steps": final,
                       "seconds": None, "fidelity": fidelity})
    result = {"config": args.config, "overrides": args.set, "mode": mode, "threads": args.threads,
              "train_minutes": args.train_minutes, "distill_minutes": args.distill_minutes,
              "curve": monitor_rows(train_dir), "stages": stages,
              "null": None if args.no_null else layer_null(cfg) if mode == "layers"
              else whole_null(args, cfg, env, work),
              "seconds": time.perf_counter() - t0}
    (train_dir / args.out).write_text(json.dumps(result, indent=1))
    print_tables(result)
    if args.plot:
        plot(result, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
