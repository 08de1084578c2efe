"""Does anything beside the networks cost time in pipeline.generate? Noise speed, end-to-end vs
network-only time, and a profile of the generating thread, on the CPU.

    .venv/bin/python benchmarks/generate_pipeline.py [--geometry ds3] [--preset tiny] [--steps 1]
                                                     [--n 256] [--batch 64] [--threads 0 2]
                                                     [--profile-lines 15] [--ranks 2]

1. Noise: ds3 showers/s of one voxel-noise draw by :class:`pipeline.diffusion.NoiseSource`
   (counter-based, batched integer hashing) and by the previous implementation (a numpy
   ``SeedSequence`` and a CPU ``torch.Generator`` per shower, kept below as the "before").
2. A finished run with random ``--preset`` weights (speed does not depend on training) is generated
   into a fresh zarr sample by ``pipeline.generation.command.run`` (the code behind
   ``python -m pipeline.generate``, including the store, block markers and manifest) once per
   ``--threads`` value (``generate.writer_threads``), and compared with the network-only time: the
   same ``--n`` showers in batches of ``--batch`` through ``steps`` calls of both networks on ready
   tensors, nothing else.
3. cProfile of the generating (main) thread of one more run: its top lines by own time.
4. Ranks (``--ranks``): the same sample by 1 and by ``--ranks`` concurrent
   ``python -m pipeline.generate --rank r --world-size W`` processes with one thread each (wall time
   including start-up): the per-rank model of ``docs/scaling.md`` says the showers/s add up while
   each rank has its own core.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generate_speed import stats_store  # noqa: E402 - benchmarks/ is the script's directory

from pipeline.config import Config, StoreLayout, save_resolved  # noqa: E402
from pipeline.data import run_layout  # noqa: E402
from pipeline.data.run_layout import sample_blocks_dir  # noqa: E402
from pipeline.data.run_record import RunRecord  # noqa: E402
from pipeline.diffusion import CosineSchedule, NoiseSource, shower_seed  # noqa: E402
from pipeline.generation.command import run  # noqa: E402
from pipeline.generation.sampler import load_sampler  # noqa: E402
from pipeline.models import build_models  # noqa: E402
from pipeline.physics.geometry import load_geometry  # noqa: E402
from pipeline.training.ema import EMA, export_ema  # noqa: E402
from pipeline.training.losses import DiffusionLoss  # noqa: E402


def seeded_generator_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """The noise before the counter-based one: one SeedSequence and one CPU generator per shower."""
    gen, rows = torch.Generator(device="cpu"), []
    for seed in seeds:
        gen.manual_seed(int(np.random.SeedSequence([seed, 2, 0]).generate_state(1, np.uint64)[0]))
        rows.append(torch.randn(shape, generator=gen))
    return torch.stack(rows)


def noise_rates(shape: tuple[int, ...], batch: int, repeats: int = 5) -> dict[str, float]:
    """Showers/s of one voxel-noise draw, best of ``repeats`` batches, before and now."""
    seeds = [shower_seed(0, i) for i in range(batch)]
    out = {}
    for name, draw in (("before (generator per shower)",
                        lambda: seeded_generator_noise(seeds, shape)),
                       ("now (counter-based)", lambda: NoiseSource(seeds)(shape, 0, "voxels"))):
        draw()
        best = min(_seconds(draw) for _ in range(repeats))
        out[name] = batch / best
    return out


def _seconds(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def finished_run(tmp: Path, args: argparse.Namespace) -> Config:
    """A config whose teacher run holds random weights, exported like a finished training run."""
    store = stats_store(args.geometry, tmp)
    cfg = Config()
    cfg.data.geometry, cfg.data.inputs, cfg.data.store = (
        args.geometry, [str(tmp / "standin.hdf5")], str(store.path))
    cfg.run.dir, cfg.model.preset = str(tmp / "run"), args.preset
    cfg.sampling.steps = cfg.distill.final_steps = args.steps
    g = cfg.generate
    g.n, g.model, g.per_rank_batch_size, g.block_size = args.n, "teacher", args.batch, 128
    g.layout = StoreLayout(chunk_rows=32, shard_rows=128)
    torch.manual_seed(0)
    pair = DiffusionLoss(*build_models(cfg.model, store.geometry), CosineSchedule())
    for p in pair.parameters():  # zero-initialised output layers would make the networks trivial
        if not p.abs().sum():
            torch.nn.init.normal_(p, std=0.02)
    run_dir = Path(cfg.run.dir)
    (run_dir / "ema").mkdir(parents=True)
    export_ema(EMA(pair, 0.9), run_dir / "ema" / "ema.safetensors",
               {"preprocessing_stats": store.stats})
    config = save_resolved(cfg, run_dir)
    RunRecord.of_export(cfg, run_dir, run_dir / "ema" / "ema.safetensors", sample_steps=args.steps,
                        config_source=str(config)).write(run_dir)
    return cfg


@torch.no_grad()
def network_only_seconds(cfg: Config, n: int, batch: int) -> float:
    """The networks' share of generating ``n`` showers: ``steps`` calls of both per batch, on ready
    tensors."""
    sampler = load_sampler(run_layout.model_dir(cfg), torch.device("cpu"))
    L = sampler.geometry.shape[0]
    t0 = time.perf_counter()
    for b0 in range(0, n, batch):
        b = min(batch, n - b0)
        z, layers = torch.randn(b, *sampler.geometry.shape), torch.randn(b, L)
        t, cond = torch.full((b,), 0.5), torch.zeros(b)
        for _ in range(sampler.steps):
            sampler.layer.model(layers, t, cond)
            sampler.voxel.model(z, t, cond, layers)
    return time.perf_counter() - t0


def generate_seconds(cfg: Config, out: Path, threads: int) -> float:
    cfg.generate.out, cfg.generate.writer_threads = str(out), threads
    t0 = time.perf_counter()
    if run(cfg, rank=0, world_size=1) != 0:
        raise RuntimeError(f"pipeline.generate into {out} failed")
    return time.perf_counter() - t0


def ranks_seconds(cfg: Config, out: Path, ranks: int) -> tuple[float, float]:
    """Wall time of ``ranks`` concurrent single-threaded generate processes writing one sample, and
    the showers/s of one rank while it generates (its blocks' seconds from the block markers: no
    start-up)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = str(Path(cfg.run.dir) / "config.yaml")
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.generate", "--config", config,
                               "--out", str(out), "--rank", str(r), "--world-size", str(ranks)],
                              cwd=ROOT, env=env, stderr=subprocess.DEVNULL) for r in range(ranks)]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError(f"pipeline.generate with {ranks} ranks into {out} failed")
    wall = time.perf_counter() - t0
    markers = [json.loads(p.read_text()) for p in sample_blocks_dir(out).glob("block_*.json")]
    busy = {r: sum(m["seconds"] for m in markers if m["rank"] == r) for r in range(ranks)}
    return wall, cfg.generate.n / sum(busy.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--geometry", default="ds3")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", nargs="+", type=int, default=[0, 2])
    p.add_argument("--profile-lines", type=int, default=15)
    p.add_argument("--ranks", type=int, default=2,
                   help="compare 1 and this many single-threaded ranks; 0: skip")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = finished_run(Path(tmp), args)
        shape = tuple(load_geometry(args.geometry).shape)
        print(f"## {args.geometry} {shape}, preset {args.preset}, {args.steps} steps, "
              f"{args.n} showers, batch {args.batch}, {torch.get_num_threads()} torch threads\n")
        print("| noise | ds3-sized showers/s | ms per shower |\n|---|---|---|")
        for name, rate in noise_rates(shape, args.batch).items():
            print(f"| {name} | {rate:.0f} | {1e3 / rate:.3f} |")
        nets = network_only_seconds(cfg, args.n, args.batch)
        print(f"\n| path | seconds | ms per shower | vs network only |\n|---|---|---|---|\n"
              f"| networks only | {nets:.1f} | {1e3 * nets / args.n:.2f} | 1.000 |")
        for threads in args.threads:
            seconds = generate_seconds(cfg, Path(tmp) / f"t{threads}.zarr", threads)
            print(f"| pipeline.generate, writer_threads={threads} | {seconds:.1f} | "
                  f"{1e3 * seconds / args.n:.2f} | {seconds / nets:.3f} |", flush=True)
        profiler = cProfile.Profile()
        profiler.enable()
        generate_seconds(cfg, Path(tmp) / "profiled.zarr", max(args.threads))
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.profile_lines)
        print(f"\nProfile of the generating thread (writer_threads={max(args.threads)}), "
              f"top {args.profile_lines} by own time:\n\n```\n{text.getvalue().strip()}\n```")
        if args.ranks > 1:
            print("\n| ranks (1 thread each) | wall seconds | showers/s (wall) "
                  "| showers/s per rank while generating |\n|---|---|---|---|")
            for ranks in (1, args.ranks):
                seconds, per_rank = ranks_seconds(cfg, Path(tmp) / f"r{ranks}.zarr", ranks)
                print(f"| {ranks} | {seconds:.1f} | {args.n / seconds:.2f} | {per_rank:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
