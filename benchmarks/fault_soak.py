"""Random-kill soak: SIGKILL the stages at random moments, re-run until complete, compare with an
uninterrupted run.

    .venv/bin/python benchmarks/fault_soak.py [--kills 20]
                                              [--stages convert train distill generate export]
                                              [--seed 0] [--work DIR] [--json docs/fault_soak.json]

4096 stand-in ds2 showers, the tiny preset, two ranks where a stage has ranks (convert:
``mpirun -n 2``, 64 shards; train (16 steps) and a distillation stage (12 steps): two processes with
the variables ``srun`` sets, a checkpoint every 2 steps; generate: 384 showers in 12 blocks,
``--rank r --world-size 2``; export of the converted store: one process; convert's kills hit the
whole ``mpirun`` process group). Each stage first runs uninterrupted (the reference). Then, round
after round, the stage starts from nothing and is killed at a moment drawn uniformly from
``[0.05, 1.1] x`` the reference's wall time: SIGKILL to one rank or to all (a coin flip); the other
ranks are killed 1 s later, as ``srun --kill-on-bad-exit`` does. The same command is re-run until it
completes, and the result must equal the reference: the converted store byte for byte, trained and
distilled weights and EMA bit for bit (sha256 of the state dicts in ``DONE.json``) and their CSV
logs row for row (timing columns aside; validation at steps 0, 8 and 16, so a kill before the first
checkpoint leaves rows behind), generated showers and energies bit for bit with every index exactly
once, the export's datasets. Rounds continue until ``--kills`` kills have landed in each stage.
Prints a table (kills, resumes, rounds, mismatches) and writes every attempt to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import h5py
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_tools.simulate import simulate_file
from pipeline.data.run_layout import sample_blocks_dir, sample_manifest
from pipeline.data.run_record import read_record
from pipeline.data.shower_store import ShowerStore
from pipeline.training.metrics_log import comparable_rows

LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
PREFIXES = ("SLURM_", "PMI_", "PMIX_", "OMPI_", "SUBMITIT_", "MPI_LOCAL", "HYDRA_")


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in LAUNCHER and not k.startswith(PREFIXES)}
    return {**clean, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


class Stage:
    """How to start a stage's processes in a work directory, reset it, and check its result."""

    def __init__(self, name: str, start: Callable[[Path], list[subprocess.Popen]],
                 reset: Callable[[Path], None], result: Callable[[Path], object]) -> None:
        self.name, self.start, self.reset, self.result = name, start, reset, result


def spawn(argv: list[str], **extra: str) -> subprocess.Popen:
    """A process in its own session (a kill takes its children too); stderr kept for the report."""
    return subprocess.Popen(argv, cwd=ROOT, env=env(**extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def python(*args: str, **extra: str) -> subprocess.Popen:
    return spawn([sys.executable, *args], **extra)


def two_ranks(module: str, *args: str) -> list[subprocess.Popen]:
    """Two ranks of ``python -m module args`` with the variables srun sets."""
    job = str(random.randrange(10**6, 10**7))
    return [python("-m", module, *args, SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                   SLURM_STEP_NODELIST="localhost", SLURM_JOB_ID=job, SLURM_NODEID="0")
            for r in range(2)]


def attempt(procs: list[subprocess.Popen], kill_after: float | None, rng: random.Random) -> dict:
    """Wait for ``procs``; at ``kill_after`` seconds SIGKILL one of them or all (the rest 1 s
    later)."""
    t0 = time.monotonic()
    while any(p.poll() is None for p in procs):
        if kill_after is not None and time.monotonic() - t0 >= kill_after:
            at = time.monotonic() - t0
            victims = procs if rng.random() < 0.5 else [rng.choice(procs)]
            for p in victims:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            time.sleep(1.0)  # srun --kill-on-bad-exit: the others go too
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            for p in procs:
                p.wait()
            return {"killed": True, "at_s": round(at, 2), "victims": len(victims),
                    "processes": len(procs)}
        time.sleep(0.02)
    errors = [p.stderr.read()[-2000:] for p in procs if p.returncode != 0]
    return {"killed": False, "seconds": round(time.monotonic() - t0, 2),
            "codes": [p.returncode for p in procs], "errors": errors}


def soak(stage: Stage, work: Path, reference: object, duration: float, kills_wanted: int,
         rng: random.Random) -> dict:
    kills = resumes = rounds = mismatches = 0
    attempts = []
    while kills < kills_wanted:
        rounds += 1
        stage.reset(work)
        for _ in range(200):
            outcome = attempt(stage.start(work), rng.uniform(0.05, 1.1) * duration, rng)
            attempts.append({"stage": stage.name, "round": rounds, **outcome})
            if outcome["killed"]:
                kills += 1
                resumes += 1
                continue
            if outcome["codes"] != [0] * len(outcome["codes"]):
                raise RuntimeError(f"{stage.name}: a re-run failed: {outcome}")
            break
        else:
            raise RuntimeError(f"{stage.name}: no completion in 200 attempts")
        same = stage.result(work) == reference
        mismatches += not same
        attempts[-1]["matches_reference"] = same
        print(f"  {stage.name} round {rounds}: {kills} kills so far, "
              f"result {'==' if same else '!='} reference", file=sys.stderr, flush=True)
    return {"stage": stage.name, "kills": kills, "resumes": resumes, "rounds": rounds,
            "mismatches": mismatches, "reference_seconds": round(duration, 2), "attempts": attempts}


def build(root: Path) -> tuple[Path, dict[str, Stage]]:
    """Stand-in data, the config, and the five stages (outputs under each work directory)."""
    root.mkdir(parents=True, exist_ok=True)
    # convert and export take seconds
    simulate_file(root / "standin.hdf5", "ds2", 4096, seed=1, workers=2)
    mpirun = str(Path(sys.executable).with_name("mpirun"))
    teacher = root / "reference" / "train"

    def config(work: Path) -> Path:
        path = work / "cfg.yaml"
        path.write_text(yaml.safe_dump({
            "run": {"dir": str(work / "train"), "seed": 3},
            "data": {"geometry": "ds2", "inputs": [str(root / "standin.hdf5")],
                     "store": str(root / "store.zarr"),
                     "layout": {"chunk_rows": 16, "shard_rows": 64}, "validation_fraction": 0.125,
                     "global_batch_size": 8,
                     "shuffle_chunks": 4, "num_workers": 1, "prefetch_chunks": 4},
            "model": {"preset": "tiny"}, "sampling": {"steps": 4},
            "train": {"max_steps": 16, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every_steps": 2,
                      "checkpoint_every_minutes": 0, "log_every_steps": 4, "ema_decay": 0.99,
                      "validation": {"every_steps": 8, "per_rank_batches": 1},
                      "collective_timeout_minutes": 1},
            "distill": {"final_steps": 2, "max_steps": 12, "lr": 5e-4, "warmup_steps": 1,
                        "ema_decay": 0.9},
            "generate": {"n": 384, "seed": 5, "model": str(teacher),
                         "out": str(work / "sample.zarr"), "block_size": 32,
                         "per_rank_batch_size": 16, "layout": {"chunk_rows": 16, "shard_rows": 32}},
        }))
        return path

    def fresh(work: Path, teacher_run: bool = False) -> None:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        # the trained reference run, without the reference's own distillation stages
        if teacher_run:
            shutil.copytree(teacher, work / "train", ignore=shutil.ignore_patterns("distill"))

    def store_bytes(work: Path) -> object:
        return tree_bytes(work / "store.zarr")

    def digests(run: Path) -> object:  # weights, EMA and the CSV logs (timing columns aside)
        done = read_record(run)
        logs = [comparable_rows(p) for p in sorted((run / "logs").glob("*.csv"))]
        return (done.step, done.weights_sha256, done.ema_sha256, logs) if done else None

    def sample(work: Path) -> object:
        path = work / "sample.zarr"
        s = ShowerStore(path)
        markers = sorted(p.name for p in sample_blocks_dir(path).glob("block_*.json"))
        return (s.showers[:].tobytes(), s.energies_array[:].tobytes(), markers,
                json.loads(sample_manifest(path).read_text())["n"])

    def exported(work: Path) -> object:  # the converted store (4096 showers), exported
        with h5py.File(work / "sample.hdf5", "r") as f:
            return f["showers"][:].tobytes(), f["incident_energies"][:].tobytes()

    stages = {
        "convert": Stage("convert",
                         lambda w: [spawn([mpirun, "-n", "2", sys.executable, "-m",
                                           "data_tools.convert", str(root / "standin.hdf5"),
                                           "--geometry", "ds2", "--out", str(w / "store.zarr"),
                                           "--chunk-rows", "16", "--shard-rows", "64",
                                           "--validation-fraction", "0.125", "--quiet"])],
                         fresh, store_bytes),
        "train": Stage("train", lambda w: two_ranks("pipeline.train", "--config", str(config(w))),
                       fresh, lambda w: digests(w / "train")),
        "distill": Stage("distill",
                         lambda w: two_ranks("pipeline.distill", "--config", str(config(w)),
                                             "--stage", "1"),
                         lambda w: fresh(w, teacher_run=True),
                         lambda w: digests(w / "train" / "distill" / "stage_1")),
        "generate": Stage("generate",
                          lambda w: [python("-m", "pipeline.generate", "--config", str(config(w)),
                                            "--rank", str(r), "--world-size", "2")
                                     for r in range(2)],
                          fresh, sample),
        "export": Stage("export", lambda w: [python("-m", "data_tools.export",
                                                    str(root / "reference" / "store.zarr"),
                                                    "--out", str(w / "sample.hdf5"), "--quiet",
                                                    "--workers", "1")],
                        fresh, exported),
    }
    return root, stages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="kills per stage")
    p.add_argument("--stages", nargs="+",
                   default=["convert", "train", "distill", "generate", "export"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, help="work directory (default: a temporary one, removed)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rng = random.Random(args.seed)
    random.seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root, stages = build(args.work or Path(tmp))
        subprocess.run([sys.executable, "-m", "data_tools.convert", str(root / "standin.hdf5"),
                        "--geometry", "ds2", "--out", str(root / "store.zarr"),
                        "--chunk-rows", "16", "--shard-rows", "64",
                        "--validation-fraction", "0.125", "--quiet"],
                       check=True, env=env(), cwd=ROOT)
        reference = root / "reference"
        reference.mkdir()
        rows = []
        # references in dependency order
        for name in ("convert", "train", "distill", "generate", "export"):
            stage = stages[name]
            t0 = time.monotonic()
            outcome = attempt(stage.start(reference), None, rng)
            if outcome["codes"] != [0] * len(outcome["codes"]):
                raise RuntimeError(f"reference {name} failed: {outcome}")
            duration = time.monotonic() - t0
            print(f"reference {name}: {duration:.1f} s", file=sys.stderr, flush=True)
            if name in args.stages:
                rows.append(soak(stage, root / f"soak-{name}", stage.result(reference), duration,
                                 args.kills, rng))
    print("| stage | processes | kills (one / all) | kill times s | re-runs | rounds completed "
          "| rounds differing from the uninterrupted run | uninterrupted s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        killed = [a for a in r["attempts"] if a["killed"]]
        one = sum(a["victims"] < a["processes"] for a in killed)
        times = [a["at_s"] for a in killed]
        print(f"| {r['stage']} | {killed[0]['processes']} | "
              f"{len(killed)} ({one} / {len(killed) - one}) | "
              f"{min(times):.1f}-{max(times):.1f} | {r['resumes']} | {r['rounds']} | "
              f"{r['mismatches']} | {r['reference_seconds']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
