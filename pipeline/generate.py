"""Mass generation: a trained or distilled model -> a zarr sample of N showers, on any number of ranks.

    python -m pipeline.generate --config configs/ds3.yaml --n 1000000            # generate.model: final stage
    srun -N 8 --ntasks-per-node 4 --gpus-per-node 4 python -m pipeline.generate --config configs/ds3.yaml
    sbatch --array 0-15 ... python -m pipeline.generate --config ... --rank $SLURM_ARRAY_TASK_ID --world-size 16
    python -m pipeline.generate --config configs/ds3.yaml --finalize               # only check blocks, write manifest

Shower ``i`` gets the incident energy and the noise of ``(generate.seed, i)`` alone: log-uniform in
``generate.energy_range`` or the i-th energy of ``generate.energies_from`` (so a sample matches a reference
one to one). The sample is therefore the same whatever the batch size, ranks or nodes (noise bitwise,
showers to float tolerance). Work goes in blocks of ``block_size`` consecutive indices; see
:mod:`pipeline.sample_store` for how ranks share them, how a re-run resumes and when the manifest is
written. Ranks come from :mod:`pipeline.distributed` (srun, torchrun, MPI) or ``--rank/--world-size``;
no process group is needed. On GPU the networks run under bf16 autocast (``generate.precision``), with
``batch_size: 0`` filling the GPU, and optionally ``torch.compile``.

Exit codes: 0 this rank's blocks are done (the rank that sees every block done writes the manifest);
2 config, model or sample error; 75 stopped by SIGUSR1/SIGTERM after the current batch: re-run to resume.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from data_tools.calochallenge_hdf5 import InputError
from pipeline import run_layout
from pipeline.checkpoint import StopSignals
from pipeline.config import Config, load_config
from pipeline.config_loader import ConfigError, add_config_arguments, to_dict
from pipeline.diffusion import CosineSchedule, generate, shower_seed, uniform_from_seeds
from pipeline.distributed import DistributedError, discover
from pipeline.ema import load_ema_weights, utc_now
from pipeline.engine import autocast, resolve_precision
from pipeline.geometry import Geometry, load_geometry
from pipeline.models import build_models
from pipeline.preprocessing import Preprocessor
from pipeline.sample_store import SampleStore
from pipeline.store import ShowerStore, StoreError
from pipeline.train import EXIT_CONFIG, EXIT_DONE, EXIT_REQUEUE, read_done

CPU_BATCH = 64


@dataclass
class Sampler:
    """A finished run's EMA networks, preprocessing and step count, ready to generate."""

    layer_net: torch.nn.Module
    voxel_unet: torch.nn.Module
    preprocessor: Preprocessor
    schedule: CosineSchedule
    steps: int
    eta: float
    geometry: Geometry
    info: dict[str, Any]

    def __call__(self, energies: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return generate(energies, seeds, self.layer_net, self.voxel_unet, self.preprocessor, self.steps,
                        schedule=self.schedule, eta=self.eta)


def load_sampler(model_dir: Path, device: torch.device, *, compile: bool = False) -> Sampler:
    """The EMA networks of the finished run (training or distillation stage) in ``model_dir``."""
    done = read_done(model_dir)
    if done is None:
        raise ConfigError(f"generate.model: {model_dir} has no {run_layout.DONE_FILE}: the training or distillation "
                          f"stage has not finished there")
    cfg = load_config(done["config"])
    parts, meta = load_ema_weights(done["ema"], device)
    store_path = Path(done["store"])
    stats = meta.get("preprocessing_stats")
    if stats is None:  # exports without the statistics: read them from the training store
        try:
            stats = ShowerStore(store_path).stats
        except StoreError as err:
            raise ConfigError(f"generate.model: the preprocessing statistics come from the training store "
                              f"{store_path}, which cannot be read: {err}") from None
    geometry = load_geometry(done["geometry"])
    layer_net, unet = build_models(cfg.model, geometry)
    layer_net.load_state_dict(parts["layer_net"])
    unet.load_state_dict(parts["voxel_unet"])
    layer_net, unet = layer_net.to(device).eval(), unet.to(device).eval()
    if compile:
        layer_net, unet = torch.compile(layer_net, dynamic=False), torch.compile(unet, dynamic=False)
    info = {"model_dir": str(model_dir.resolve()), "stage": done.get("stage", 0),
            "sample_steps": done.get("sample_steps", cfg.diffusion.sample_steps), "ema": done["ema"],
            "ema_sha256": done.get("ema_sha256"), "preset": cfg.model.preset, "training_store": str(store_path)}
    return Sampler(layer_net, unet, Preprocessor(stats, geometry).to(device),
                   CosineSchedule.from_config(cfg.diffusion), int(info["sample_steps"]), cfg.diffusion.eta,
                   geometry, info)


class IncidentEnergies:
    """Incident energy (MeV) of shower i: log-uniform from (seed, i), or the i-th of a reference sample."""

    def __init__(self, seed: int, energy_range: Sequence[float], reference: str | None) -> None:
        self.seed, (self.lo, self.hi) = seed, energy_range
        self.reference = None
        if reference is not None:
            from pipeline.evaluation.samples import SampleError, open_sample

            try:
                self.reference = np.asarray(open_sample(reference, role="energies_from").energies, dtype=np.float64)
            except SampleError as err:
                raise ConfigError(f"generate.energies_from: {err}") from None

    def describe(self) -> dict[str, Any]:
        if self.reference is not None:
            return {"energies": "reference", "energies_n": int(len(self.reference))}
        return {"energies": "log-uniform", "energy_range_mev": [float(self.lo), float(self.hi)]}

    def __call__(self, start: int, stop: int) -> np.ndarray:
        if self.reference is not None:
            return self.reference[start:stop].copy()
        u = uniform_from_seeds([shower_seed(self.seed, i) for i in range(start, stop)])
        return np.exp(np.log(self.lo) + u * (np.log(self.hi) - np.log(self.lo)))


def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def auto_batch_size(sampler: Sampler, device: torch.device, precision: str, cap: int) -> int:
    """Showers per forward pass that fill ~70 % of the free GPU memory (``CPU_BATCH`` on CPU)."""
    if device.type != "cuda":
        return min(CPU_BATCH, cap)
    peaks = []
    for b in (8, 16):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with autocast(precision, device):
            sampler(torch.full((b,), 1e4, dtype=torch.float64), list(range(b)))
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_shower = max((peaks[1] - peaks[0]) / 8, 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(8, min(cap, (0.7 * free - peaks[0]) // per_shower // 8 * 8)))


def plan_for(cfg: Config, sampler: Sampler, energies: IncidentEnergies, n: int) -> dict[str, Any]:
    """What defines the sample (stored in its attrs; a re-run must match it)."""
    g = cfg.generate
    return {"n": n, "seed": g.seed, "block_size": g.block_size, "geometry": sampler.geometry.name,
            "model_dir": sampler.info["model_dir"], "stage": sampler.info["stage"],
            "sample_steps": sampler.steps, "eta": sampler.eta, "ema_sha256": sampler.info["ema_sha256"],
            **energies.describe()}


def generate_blocks(sample: SampleStore, sampler: Sampler, energies: IncidentEnergies, blocks: list[int], *,
                    batch_size: int, precision: str, device: torch.device, rank: int, signals: StopSignals,
                    pad: bool, progress: bool) -> bool:
    """Generate and write ``blocks``; False if a stop signal ended it early (the current block is redone)."""
    total = sum(b - a for a, b in map(sample.rows, blocks))
    shard = sample.store.shard_rows
    bar = tqdm(total=total, unit="shower", unit_scale=True, disable=not progress, desc="generate", dynamic_ncols=True)
    try:
        for block in blocks:
            start, stop = sample.rows(block)
            t0, started = time.perf_counter(), utc_now()
            e_block = energies(start, stop)
            for s0 in range(start, stop, shard):
                s1 = min(s0 + shard, stop)
                out = np.empty((s1 - s0, *sampler.geometry.shape), dtype=np.float32)
                for b0 in range(s0, s1, batch_size):
                    if signals.received:
                        return False
                    b1 = min(b0 + batch_size, s1)
                    idx = list(range(b0, b1))
                    if pad:  # constant shapes for torch.compile; padded rows are dropped
                        idx += [idx[-1]] * (batch_size - len(idx))
                    e = torch.from_numpy(e_block[np.array(idx) - start])
                    with autocast(precision, device):
                        showers = sampler(e, [shower_seed(sample.plan["seed"], i) for i in idx])
                    out[b0 - s0:b1 - s0] = showers[: b1 - b0].float().cpu().numpy()
                    bar.update(b1 - b0)
                sample.write(s0, out, e_block[s0 - start:s1 - start])
            seconds = time.perf_counter() - t0
            sample.mark_done(block, {"seconds": seconds, "started_at": started, "rank": rank,
                                     "host": socket.gethostname(), "device": str(device), "precision": precision,
                                     "batch_size": batch_size, "showers_per_s": (stop - start) / seconds})
            if not progress:
                print(f"generate: rank {rank} block {block} ({start}-{stop}) {(stop - start) / seconds:.1f} showers/s",
                      file=sys.stderr)
    finally:
        bar.close()
    return True


def run(cfg: Config, *, rank: int | None = None, world_size: int | None = None, finalize_only: bool = False,
        config_path: str | None = None) -> int:
    """Generate this rank's blocks of the config's sample; returns the exit code (see the module doc)."""
    env = discover()
    rank = env.rank if rank is None else rank
    world_size = env.world_size if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ConfigError(f"--rank {rank} is not in [0, --world-size {world_size})")
    device = pick_device(env.local_rank)
    g = cfg.generate
    sampler = load_sampler(run_layout.model_dir(cfg), device, compile=g.compile)
    if sampler.geometry.name != cfg.data.geometry:
        raise ConfigError(f"data.geometry: {cfg.data.geometry}, but the model was trained on {sampler.geometry.name}")
    if g.energies_from is not None and g.energies_from == cfg.evaluate.reference:  # simulate a stand-in reference
        from data_tools.standin import ensure_standin

        try:
            ensure_standin(g.energies_from, cfg.evaluate.reference_standin, cfg.data.geometry, "generate.energies_from",
                           standin_key="evaluate.reference_standin")
        except InputError as err:
            raise ConfigError(str(err)) from None
    energies = IncidentEnergies(g.seed, g.energy_range, g.energies_from)
    n = g.n or len(energies.reference)  # type: ignore[arg-type]
    if energies.reference is not None and n > len(energies.reference):
        raise ConfigError(f"generate.n: {n} showers, but generate.energies_from has only {len(energies.reference)}")
    path = run_layout.sample_path(cfg)
    sample = SampleStore(path, plan_for(cfg, sampler, energies, n), sampler.geometry, g.layout)
    if sample.complete():
        print(f"generate: {path} is already complete ({n} showers; {path / 'manifest.json'})", file=sys.stderr)
        return EXIT_DONE
    if not finalize_only:
        precision = resolve_precision(g.precision, device)
        batch = g.batch_size or auto_batch_size(sampler, device, precision, g.block_size)
        blocks = sample.blocks_of(rank, world_size)
        if rank == 0:
            print(f"generate: {n} showers in {sample.n_blocks} blocks of {g.block_size} -> {path}; rank {rank}/"
                  f"{world_size} has {len(blocks)} block(s) left; model {sampler.info['model_dir']} (stage "
                  f"{sampler.info['stage']}, {sampler.steps} steps), {device}, {precision}, batch {batch}",
                  file=sys.stderr)
        with StopSignals() as signals:
            finished = generate_blocks(sample, sampler, energies, blocks, batch_size=batch, precision=precision,
                                       device=device, rank=rank, signals=signals, pad=g.compile,
                                       progress=rank == 0 and sys.stderr.isatty())
        if not finished:
            print(f"generate: rank {rank} stopped by {signals.received}; re-run the same command to resume",
                  file=sys.stderr)
            return EXIT_REQUEUE
    if sample.missing():
        if finalize_only:
            raise StoreError(f"{path}: blocks {sample.missing()[:5]} are not finished; run pipeline.generate first")
        print(f"generate: rank {rank} done; {len(sample.missing())} block(s) of other ranks still running",
              file=sys.stderr)
        return EXIT_DONE
    manifest = sample.finalize({"model": sampler.info, "config": to_dict(cfg), "config_source": config_path})
    print(f"generate: complete, {n} showers in {path} ({manifest['timing']['ms_per_shower_per_rank']:.2f} ms per "
          f"shower per rank)", file=sys.stderr)
    return EXIT_DONE


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--model", help="final, teacher, stage_K or a run directory (generate.model)")
    p.add_argument("--n", type=int, help="number of showers (generate.n)")
    p.add_argument("--out", help="zarr sample to write (generate.out)")
    p.add_argument("--rank", type=int, help="this process's rank, e.g. $SLURM_ARRAY_TASK_ID (with --world-size)")
    p.add_argument("--world-size", type=int, help="number of ranks, e.g. $SLURM_ARRAY_TASK_COUNT")
    p.add_argument("--finalize", action="store_true", help="only check that every block is done and write the manifest")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    for key, value in (("model", args.model), ("n", args.n), ("out", args.out)):
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


if __name__ == "__main__":
    sys.exit(main())
