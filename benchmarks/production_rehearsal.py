"""The production path at full size: a cheap model -> N showers over SLURM tasks -> files -> verify
-> evaluate.

    .venv/bin/python benchmarks/production_rehearsal.py --config configs/rehearsal_ds2.yaml \
        --workdir /work/reh --n 1000000 --via launch --results docs/rehearsal_ds2.json
    ... --n 100000 --via sbatch        # the same through `sbatch --array slurm/generate.sh`
    ... --n 100000 --via local    # `python -m pipeline.generate --rank r --world-size 2`, r=0,1

Every step is the command a user types (README "Producing a million showers"), run as a child
process whose wall time and peak resident memory (``wait4``) are recorded; SLURM-run generation
ranks report their own peak memory in the block markers. Steps whose output is complete are skipped,
so re-running the same command resumes. Stages: ``data_tools.convert`` (stand-in training data and
the reference) and ``pipeline.train`` (once per workdir), ``pipeline.generate`` into
``WORKDIR/samples/<N>.zarr`` (``--ranks`` tasks), the network-only time of the same showers (in this
process, one thread), ``data_tools.export`` into files of ``generate.export_rows_per_file`` showers,
``data_tools.inspect --verify`` of the sample and of the files, and ``pipeline.evaluate`` against
the reference. The results of each N go into ``--results`` (JSON, merged).

Faults (each ends with the same command re-run, then the same checks): ``--kill-generate-after S``
kills one generation rank (``--via local``, a seeded random rank) with SIGKILL S seconds in and
starts it again; ``--compare-with OTHER.zarr`` then compares every shard file of the sample with an
uninterrupted run's, byte for byte. ``--kill-export-after S`` kills the export S seconds in.
``--full-disk-gb G`` exports onto an ext4 filesystem with G GB free (a loop-mounted file in the
workdir filled by a ballast file; root only), records the error, frees the space and re-runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# benchmarks/ is the script's directory
from generate_pipeline import network_only_seconds  # noqa: E402
from rehearsal_faults import full_disk_export, shard_digests  # noqa: E402

from data_tools.inspect import disk_bytes  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data import run_layout  # noqa: E402
from pipeline.physics.geometry import load_geometry  # noqa: E402

PY = sys.executable


def timed(
    cmd: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    *,
    check: bool = True,
    kill_after: float | None = None,
) -> dict[str, Any]:
    """Run ``cmd`` (output appended to ``log``): wall seconds, peak RSS and exit code; raises when
    it fails (``check``). ``kill_after``: SIGKILL it after that many seconds."""
    t0 = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        if kill_after is not None:
            try:
                proc.wait(kill_after)
            except subprocess.TimeoutExpired:
                proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if check and code != 0 and kill_after is None:
        raise RuntimeError(f"{' '.join(cmd[:3])} exited {code}; see {log}")
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit_code": code,
    }


def overrides(args: argparse.Namespace) -> list[str]:
    """Every path of the config moved into the workdir; the sample named after N (and --tag)."""
    w, name = args.workdir, f"{args.n}{args.tag}"
    sets = [
        f"run.dir={w}/run",
        f"data.inputs=[{w}/standin.hdf5]",
        f"data.store={w}/showers.zarr",
        f"evaluate.reference={w}/reference.hdf5",
        f"generate.n={args.n}",
        f"generate.out={w}/samples/{name}.zarr",
        f"generate.export={w}/files/{name}/generated.hdf5",
        f"evaluate.out={w}/evaluation/{name}",
        f"launch.generate.tasks_per_node={args.ranks}",
    ]
    return sets + list(args.set or [])


def set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def one_thread_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def local_ranks(args: argparse.Namespace, sets: list[str], log: Path) -> dict[str, Any]:
    """``--ranks`` local ``pipeline.generate --rank r`` processes; with ``--kill-generate-after``,
    one of them is killed (SIGKILL) and its same command started again."""

    def start(r: int) -> subprocess.Popen:
        cmd = [
            PY,
            "-m",
            "pipeline.generate",
            "--config",
            str(args.config),
            *set_args(sets),
            "--rank",
            str(r),
            "--world-size",
            str(args.ranks),
        ]
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=one_thread_env()
        )

    procs, out = {r: start(r) for r in range(args.ranks)}, {}
    if args.kill_generate_after:
        time.sleep(args.kill_generate_after)
        victim = random.Random(args.n).randrange(args.ranks)
        procs[victim].kill()
        procs[victim].wait()
        out["killed"] = {"rank": victim, "after_s": args.kill_generate_after}
        procs[victim] = start(victim)
    out["process_peak_rss_mb"] = {
        r: round(os.wait4(p.pid, 0)[2].ru_maxrss / 1024, 1) for r, p in procs.items()
    }
    return out


def generate(args: argparse.Namespace, sets: list[str], log: Path) -> dict[str, Any]:
    """``--ranks`` generation tasks by the chosen route; wall time until the manifest exists."""
    cfg = load_config(args.config, sets)
    sample = run_layout.sample_path(cfg)
    if run_layout.sample_manifest(sample).is_file():
        return {"skipped": "already complete"} | block_statistics(
            run_layout.sample_blocks_dir(sample), cfg.generate.n)
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if args.via == "local":
        out = local_ranks(args, sets, log)
    elif args.via == "launch":
        timed(
            [
                PY,
                "-m",
                "pipeline.launch",
                "--config",
                str(args.config),
                "--executor",
                "slurm",
                "--stages",
                "generate",
                *set_args(sets),
            ],
            log,
        )
    else:
        env = one_thread_env(CONFIG=str(args.config), CALO_SET=" ".join(sets), CALO_REPO=str(ROOT))
        timed(
            [
                "sbatch",
                "--parsable",
                f"--array=0-{args.ranks - 1}",
                "--nodes=1",
                "--ntasks-per-node=1",
                "--gpus-per-node=0",
                "--cpus-per-task=1",
                f"--output={log.parent}/slurm-%A_%a.out",
                str(ROOT / "slurm/generate.sh"),
            ],
            log,
            env,
        )
    while not run_layout.sample_manifest(sample).is_file():
        if args.via == "local" or time.perf_counter() - t0 > args.timeout_minutes * 60:
            raise RuntimeError(
                f"{run_layout.sample_manifest(sample)} was not written; see {log} (and sacct)"
            )
        time.sleep(5)
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out | block_statistics(run_layout.sample_blocks_dir(sample), cfg.generate.n)


def block_statistics(blocks_dir: Path, n: int) -> dict[str, Any]:
    """Per rank: busy seconds, blocks and peak RSS from the block markers; the imbalance between
    ranks (the busiest rank's seconds over the mean, minus one)."""
    ranks: dict[int, dict[str, float]] = {}
    for marker in blocks_dir.glob("block_*.json"):
        m = json.loads(marker.read_text())
        r = ranks.setdefault(
            int(m["rank"]), {"blocks": 0, "seconds": 0.0, "showers": 0, "peak_rss_mb": 0.0}
        )
        r["blocks"] += 1
        r["seconds"] += m["seconds"]
        r["showers"] += m["rows"][1] - m["rows"][0]
        r["peak_rss_mb"] = max(r["peak_rss_mb"], m.get("peak_rss_mb", 0.0))
    busy = [r["seconds"] for r in ranks.values()]
    return {
        "ranks": {
            str(k): {**v, "seconds": round(v["seconds"], 1)} for k, v in sorted(ranks.items())
        },
        "rank_seconds": round(sum(busy), 1),
        "ms_per_shower_per_rank": round(1e3 * sum(busy) / n, 3),
        "imbalance": round(max(busy) / (sum(busy) / len(busy)) - 1, 4),
    }


class SavedResults(dict):
    """One run's results, merged into the ``--results`` file under ``key`` whenever an entry is set
    (a run that fails half-way keeps what it measured)."""

    def __init__(self, path: Path | None, key: str) -> None:
        super().__init__()
        self.path, self.key = path, key

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, value)
        self.save()

    def save(self) -> None:
        if self.path is not None:
            old = json.loads(self.path.read_text()) if self.path.exists() else {}
            old[self.key] = dict(self)
            self.path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")


def rehearse(args: argparse.Namespace) -> SavedResults:
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / f"rehearsal_{args.n}{args.tag}.log"
    sets = overrides(args)
    cfg = load_config(args.config, sets)
    common = ["--config", str(args.config), *set_args(sets)]
    res = SavedResults(args.results, f"{args.n}{args.tag}_{args.via}")
    res.update(n=args.n, via=args.via, ranks=args.ranks, config=str(args.config), overrides=sets,
               date=time.strftime("%Y-%m-%d"))
    if not run_layout.sample_manifest(run_layout.sample_path(cfg)).is_file():
        if (
            not Path(cfg.data.store, "zarr.json").is_file()
            or not Path(cfg.evaluate.reference).is_file()
        ):
            res["convert"] = timed([PY, "-m", "data_tools.convert", *common], log)
        if not (run_layout.train_dir(cfg) / run_layout.DONE_FILE).is_file():
            res["train"] = timed([PY, "-m", "pipeline.train", *common], log)
    res["generate"] = generate(args, sets, log)
    sample = run_layout.sample_path(cfg)
    if args.compare_with:
        mine, other = shard_digests(sample), shard_digests(args.compare_with)
        res["generate"]["compared_with"] = {
            "sample": str(args.compare_with),
            "files": len(mine),
            "identical": mine == other,
        }
    res["disk"] = {
        "sample_bytes": disk_bytes(sample) + disk_bytes(run_layout.sample_blocks_dir(sample)),
        "float32_bytes": args.n * load_geometry(cfg.data.geometry).n_voxels * 4,
    }
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    n_net = min(args.n, args.network_showers)
    seconds = network_only_seconds(cfg, n_net, cfg.generate.per_rank_batch_size)
    res["network_only_ms_per_shower"] = round(1e3 * seconds / n_net, 3)
    export = [PY, "-m", "data_tools.export", *common, "--quiet"]
    if args.kill_export_after:
        res["export_killed"] = timed(export, log, kill_after=args.kill_export_after)
    res["export"] = timed(export, log)
    index = run_layout.export_marker(cfg)
    res["disk"]["export_bytes"] = sum(f["bytes"] for f in json.loads(index.read_text())["files"])
    res["disk"]["partial_files_left"] = [str(f) for f in index.parent.glob("*.partial")]
    for name, target in (("verify_sample", sample), ("verify_export", index)):
        res[name] = timed([PY, "-m", "data_tools.inspect", str(target), "--verify", "--json"], log)
    if args.full_disk_gb:
        res["full_disk"] = full_disk_export(args, common, log, res["disk"]["export_bytes"], timed)
    if not args.no_evaluate:
        res["evaluate"] = timed(
            [PY, "-m", "pipeline.evaluate", *common, "--quiet", "--overwrite"], log
        )
        report = json.loads((run_layout.evaluation_dir(cfg) / run_layout.REPORT_FILE).read_text())
        res["evaluate"]["report"] = {
            "timing": report["timing"],
            "peak_rss_mb": report["memory"]["peak_rss_mb"],
            "auc": {k: v.get("auc") for k, v in report["classifier"].items()},
        }
    return res


STAGES = ("generate", "export", "verify_sample", "verify_export", "evaluate")


def table(results: dict[str, Any]) -> str:
    """A results file as a markdown table: wall seconds, showers/s, peak RSS per stage."""
    keys = sorted(results, key=lambda k: (results[k]["n"], k))
    lines = ["| stage | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for stage in STAGES:
        cells = []
        for k in keys:
            r, n = results[k].get(stage), results[k]["n"]
            if not r or "skipped" in r:
                cells.append("-")
                continue
            seconds = r.get("wall_seconds", r.get("seconds"))
            rss = max(v["peak_rss_mb"] for v in r["ranks"].values()) if stage == "generate" \
                else r["peak_rss_mb"]
            cells.append(f"{seconds:.0f} s, {n / seconds:.0f}/s, {rss:.0f} MB")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs/rehearsal_ds2.yaml")
    p.add_argument("--workdir", type=Path, default=Path("runs/rehearsal"))
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--tag", default="", help="appended to the sample's name (a second sample of N)")
    p.add_argument("--via", choices=("launch", "sbatch", "local"), default="launch")
    p.add_argument("--ranks", type=int, default=2, help="generation tasks (one core each)")
    p.add_argument(
        "--network-showers", type=int, default=4096, help="showers timed through the networks alone"
    )
    p.add_argument(
        "--kill-generate-after", type=float, help="--via local: SIGKILL one rank after S seconds"
    )
    p.add_argument(
        "--compare-with", type=Path, help="a sample of the same plan to compare shard bytes with"
    )
    p.add_argument(
        "--kill-export-after", type=float, help="SIGKILL the first export after S seconds"
    )
    p.add_argument(
        "--full-disk-gb", type=float, help="also export onto a filesystem with G GB free"
    )
    p.add_argument("--no-evaluate", action="store_true")
    p.add_argument("--timeout-minutes", type=float, default=600)
    p.add_argument("--set", action="append", help="more config overrides KEY=VALUE")
    p.add_argument("--results", type=Path, help="JSON file to merge this run's results into")
    p.add_argument("--table", action="store_true", help="print --results as a table and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(args.results.read_text())))
        return 0
    args.workdir = args.workdir.resolve()
    res = rehearse(args)
    res.save()
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
