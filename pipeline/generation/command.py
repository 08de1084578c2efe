r"""Mass generation: a trained or distilled model -> a zarr sample of N showers, on any number of
ranks.

    # generate.model: final stage
    python -m pipeline.generate --config configs/ds3.yaml --n 1000000
    srun -N 8 --ntasks-per-node 4 --gpus-per-node 4 python -m pipeline.generate \
        --config configs/ds3.yaml
    sbatch --array 0-15 ... python -m pipeline.generate --config ... \
        --rank $SLURM_ARRAY_TASK_ID --world-size 16
    # only check blocks, write manifest
    python -m pipeline.generate --config configs/ds3.yaml --finalize
    python -m pipeline.generate --config configs/ds3.yaml \
        --layer-model runs/ds3_layers/distill/stage_5

Shower ``i`` gets the incident energy and the noise of ``(generate.seed, i)`` alone: log-uniform in
``generate.energy_range`` or the i-th energy of ``generate.energies_from`` (so a sample matches a
reference one to one). The sample is therefore the same whatever the batch size, ranks or nodes
(noise bitwise, showers to float tolerance). Work goes in blocks of ``block_size`` consecutive
indices; see :mod:`pipeline.data.sample_store` for how ranks share them, how a re-run resumes and
when the manifest is written. Ranks come from :mod:`pipeline.runtime.distributed` (srun, torchrun,
MPI) or ``--rank/--world-size``; no process group is needed. On GPU the networks run under bf16
autocast (``device.precision``), with ``per_rank_batch_size: 0`` filling the GPU, and optionally
``torch.compile`` and channels_last_3d; the noise is made on the device and the output is copied,
compressed and written by ``generate.writer_threads`` threads while the device computes the next
batch.

Exit codes: 0 this rank's blocks are done (the rank that sees every block done writes the
manifest); 2 config, model or sample error; 75 stopped by SIGUSR1/SIGTERM after the current batch:
re-run to resume.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from pipeline.config import Config, ConfigError, add_config_arguments, load_config, to_dict
from pipeline.data import run_layout
from pipeline.data.sample_store import SampleStore
from pipeline.data.shower_store import StoreError
from pipeline.generation.blocks import auto_batch_size, generate_blocks, pick_device
from pipeline.generation.energies import IncidentEnergies
from pipeline.generation.sampler import Sampler, load_sampler
from pipeline.runtime.distributed import DistributedError, discover
from pipeline.runtime.exit_codes import EXIT_CONFIG, EXIT_DONE, EXIT_REQUEUE, EXIT_STORAGE
from pipeline.runtime.precision import resolve_precision
from pipeline.runtime.signals import StopSignals


def sample_plan(cfg: Config, sampler: Sampler, energies: IncidentEnergies,
                n: int) -> dict[str, Any]:
    """What defines the sample (stored in its attrs; a re-run must match it)."""
    g, s = cfg.generate, cfg.sampling
    return {"n": n, "seed": g.seed, "block_size": g.block_size, "geometry": sampler.geometry.name,
            "model_dir": sampler.info["model_dir"], "stage": sampler.info["stage"],
            "sample_steps": sampler.steps, "eta": sampler.eta,
            "ema_sha256": sampler.info["ema_sha256"],
            **({"clip_x": True} if s.clip_x else {}),
            **({"threshold_fractions": True} if s.threshold_fractions else {}),
            **({"layer_ema_sha256": sampler.info["layer_model"]["ema_sha256"]}
               if "layer_model" in sampler.info else {}),
            **energies.describe()}


def run(cfg: Config, *, rank: int | None = None, world_size: int | None = None,
        finalize_only: bool = False, config_path: str | None = None) -> int:
    """Generate this rank's blocks of the config's sample; returns the exit code (see the module
    doc)."""
    env = discover()
    rank = env.rank if rank is None else rank
    world_size = env.world_size if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ConfigError(f"--rank {rank} is not in [0, --world-size {world_size})")
    device = pick_device(env.local_rank)
    g, s = cfg.generate, cfg.sampling
    torch.backends.cudnn.benchmark = cfg.device.cudnn_benchmark and device.type == "cuda"
    sampler = load_sampler(run_layout.model_dir(cfg), device, compile=g.compile,
                           compile_mode=g.compile_mode, channels_last=cfg.device.channels_last,
                           layer_model_dir=Path(g.layer_model) if g.layer_model else None,
                           clip_x=s.clip_x, threshold_fractions=s.threshold_fractions,
                           steps=g.sample_steps)
    if sampler.geometry.name != cfg.data.geometry:
        raise ConfigError(f"data.geometry: {cfg.data.geometry}, but the model was trained on "
                          f"{sampler.geometry.name}")
    if g.energies_from is not None and not Path(g.energies_from).exists() \
            and g.energies_from == cfg.evaluate.reference \
            and cfg.evaluate.reference_standin is not None:
        raise ConfigError(f"generate.energies_from: {g.energies_from} does not exist yet; it is "
                          f"the stand-in reference (evaluate.reference_standin), simulated by the "
                          f"convert stage (python -m data_tools.convert --config ...) or the demo")
    energies = IncidentEnergies(g.seed, g.energy_range, g.energies_from)
    n = g.n or len(energies.reference)  # type: ignore[arg-type]
    if energies.reference is not None and n > len(energies.reference):
        raise ConfigError(f"generate.n: {n} showers, but generate.energies_from has only "
                          f"{len(energies.reference)}")
    path = run_layout.sample_path(cfg)
    sample = SampleStore(path, sample_plan(cfg, sampler, energies, n), sampler.geometry, g.layout)
    if sample.complete():
        print(f"generate: {path} is already complete ({n} showers; {sample.manifest_path})",
              file=sys.stderr)
        return EXIT_DONE
    if not finalize_only:
        precision = resolve_precision(cfg.device.precision, device)
        batch = g.per_rank_batch_size or auto_batch_size(sampler, device, precision,
                                                         g.layout.shard_rows)
        blocks = sample.blocks_of(rank, world_size)
        if rank == 0:
            print(f"generate: {n} showers in {sample.n_blocks} blocks of {g.block_size} -> {path}; "
                  f"rank {rank}/{world_size} has {len(blocks)} block(s) left; model "
                  f"{sampler.info['model_dir']} (stage {sampler.info['stage']}, {sampler.steps} "
                  f"steps), {device}, {precision}, batch {batch}", file=sys.stderr)
        with StopSignals() as signals:
            finished = generate_blocks(sample, sampler, energies, blocks, batch_size=batch,
                                       precision=precision, device=device, rank=rank,
                                       signals=signals, pad=g.compile,
                                       progress=rank == 0 and sys.stderr.isatty(),
                                       writer_threads=g.writer_threads)
        if not finished:
            sample.mark_stopped(f"signal {signals.received}", rank)
            print(f"generate: rank {rank} stopped by {signals.received}; re-run the same command "
                  f"to resume", file=sys.stderr)
            return EXIT_REQUEUE
    if sample.missing():
        if finalize_only:
            raise StoreError(f"{path}: blocks {sample.missing()[:5]} are not finished; run "
                             f"pipeline.generate first")
        print(f"generate: rank {rank} done; {len(sample.missing())} block(s) of other ranks still "
              f"running", file=sys.stderr)
        return EXIT_DONE
    manifest = sample.finalize({"model": sampler.info, "config": to_dict(cfg),
                                "config_source": config_path})
    if manifest is None:
        print(f"generate: rank {rank} done; another process is finalising {path}",
              file=sys.stderr)
        return EXIT_DONE
    print(f"generate: complete, {n} showers in {path} "
          f"({manifest['timing']['ms_per_shower_per_rank']:.2f} ms per shower per rank)",
          file=sys.stderr)
    return EXIT_DONE


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--model", help="final, teacher, stage_K or a run directory (generate.model)")
    p.add_argument("--layer-model",
                   help="run directory of a layer network trained apart (generate.layer_model)")
    p.add_argument("--n", type=int, help="number of showers (generate.n)")
    p.add_argument("--out", help="zarr sample to write (generate.out)")
    p.add_argument("--rank", type=int,
                   help="this process's rank, e.g. $SLURM_ARRAY_TASK_ID (with --world-size)")
    p.add_argument("--world-size", type=int, help="number of ranks, e.g. $SLURM_ARRAY_TASK_COUNT")
    p.add_argument("--finalize", action="store_true",
                   help="only check that every block is done and write the manifest")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    for key, value in (("model", args.model), ("layer_model", args.layer_model), ("n", args.n),
                       ("out", args.out)):
        if value is not None:
            overrides.append(f"generate.{key}={json.dumps(value)}")
    if (args.rank is None) != (args.world_size is None):
        p.error("--rank and --world-size go together")
    try:
        cfg = load_config(args.config, overrides)
        return run(cfg, rank=args.rank, world_size=args.world_size, finalize_only=args.finalize,
                   config_path=args.config)
    except (ConfigError, StoreError, DistributedError, ValueError) as err:
        print(f"generate: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:
        # disk full, I/O error: the block being written has no marker, so it is redone
        print(f"generate: error: writing {err.filename or 'the sample'} failed: "
              f"{err.strerror or err}; finished blocks are kept and a re-run writes the rest once "
              f"this is fixed", file=sys.stderr)
        return EXIT_STORAGE
