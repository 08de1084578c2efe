"""Wall time and peak memory of a full evaluation (python -m pipeline.evaluate) of stand-in showers.

    .venv/bin/python benchmarks/evaluate_benchmark.py --n 100000 [--geometry ds3] [--workdir /tmp/evalbench]
        [--workers 2] [--keep] [--results FILE.json] [-- EXTRA EVALUATE OPTIONS]

Simulates a reference (seed 1) and a generated sample (seed 2) of --n showers each (float64
CaloChallenge HDF5, as the challenge's files; skipped when the files exist), then runs the
evaluation with every metric in a subprocess and measures its wall time and peak resident memory
(the evaluation's own ru_maxrss, from its report). Prints and optionally saves a JSON summary with the report's own timing
breakdown. The sample files are deleted afterwards unless --keep; the report stays in --workdir/report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_tools.simulate import simulate_file


def ensure_sample(path: Path, geometry: str, n: int, seed: int, workers: int) -> float:
    """Simulate the sample unless it exists; seconds spent."""
    if path.exists():
        return 0.0
    t0 = time.perf_counter()
    simulate_file(path, geometry, n, seed, workers=workers, progress=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--geometry", default="ds3", choices=("ds2", "ds3"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/evalbench"))
    p.add_argument("--workers", type=int, default=2, help="simulation processes")
    p.add_argument("--keep", action="store_true", help="keep the sample files")
    p.add_argument("--results", type=Path, help="write the JSON summary here")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="options passed on to pipeline.evaluate (after --)")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ref, gen = args.workdir / f"ref_{args.geometry}_{args.n}.hdf5", args.workdir / f"gen_{args.geometry}_{args.n}.hdf5"
    sim_s = {"reference": ensure_sample(ref, args.geometry, args.n, 1, args.workers),
             "generated": ensure_sample(gen, args.geometry, args.n, 2, args.workers)}
    out = args.workdir / "report"
    extra = [a for a in args.extra if a != "--"]
    cmd = [sys.executable, "-m", "pipeline.evaluate", "--generated", str(gen), "--reference", str(ref),
           "--geometry", args.geometry, "--out", str(out), *extra]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"evaluation failed with exit code {proc.returncode}")
    report = json.loads((out / "report.json").read_text())
    summary = {
        "command": " ".join(cmd), "n_per_sample": args.n, "geometry": args.geometry, "cpus": os.cpu_count(),
        "file_bytes": {"reference": ref.stat().st_size, "generated": gen.stat().st_size},
        "simulate_s": sim_s, "evaluate_wall_s": wall,
        "evaluate_peak_rss_mb": report["memory"]["peak_rss_mb"],  # the evaluation process's own ru_maxrss
        "timing": report["timing"],
        "classifier": {k: {"auc": v["auc"], "epochs": [r["epochs"] for r in v["runs"]], "n_train": v["runs"][0]["n_train"]}
                       for k, v in report["classifier"].items()},
        "low_level_memory": report["classifier"].get("low", {}).get("memory"),
        "physics_distance": {k: {"value": report["physics_distance"][k]["value"], "error": report["physics_distance"][k]["error"]}
                             for k in ("fpd", "kpd")} if "physics_distance" in report else None,
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.results:
        args.results.write_text(text + "\n")
    if not args.keep:  # the report stays in --workdir/report
        for path in (ref, gen):
            path.unlink()


if __name__ == "__main__":
    main()
