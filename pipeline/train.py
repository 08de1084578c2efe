"""Train the layer-energy network and the voxel U-Net on a zarr store, on one CPU process or many GPUs.

    python -m pipeline.train --config configs/ds3.yaml [--set train.lr=1e-4] [--max-steps N] [--time-limit 3:55:00]
    torchrun --nproc_per_node 8 -m pipeline.train --config configs/ds3.yaml      # or srun / mpirun / submitit

Re-running the same command resumes from the newest checkpoint: weights, AdamW state, LR schedule, EMA,
step counters, every rank's RNG states and the data stream's position, so on CPU an interrupted and
resumed run ends bit-identical to an uninterrupted one. Ranks come from :mod:`pipeline.distributed`, the
engine from :mod:`pipeline.engine`, checkpoints from :mod:`pipeline.checkpoint`, logs from
:mod:`pipeline.train_log`. Config mistakes (batch not divisible over the ranks, missing or incomplete
store, geometry mismatch, too little data for the ranks) are reported before any process group starts.

Run directory (``run.dir``)::

    config.yaml        resolved config          logs/metrics.csv, logs/tensorboard/   metrics
    checkpoints/       see pipeline.checkpoint  ema/ema_step_NNNNNNNN.safetensors    EMA export (+ .pt fallback)
    REQUEUE            stopped early; re-run    DONE.json                            written last, atomically

Exit codes (the requeue logic of ``slurm/`` scripts and ``pipeline.launch`` relies on them):

- ``0``  training complete (``DONE.json`` written), or already complete.
- ``2``  config, store or launcher error, found before any process group starts.
- ``3``  non-finite loss: stopped without saving; ``latest`` still names the last good checkpoint.
- ``75`` (EX_TEMPFAIL) stopped early on SIGUSR1/SIGTERM or before ``--time-limit``, after writing a
  checkpoint and the ``REQUEUE`` marker (JSON: reason, step, checkpoint). Requeue the job or re-run the
  same command. ``srun`` and ``mpirun`` pass the code on; ``torchrun`` reports any non-zero worker exit as
  1, so scripts using it should test for the ``REQUEUE`` file instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from pipeline.checkpoint import CheckpointError, StopSignals, check_resumable, resolve_init_from
from pipeline.config import Config, load_config
from pipeline.config_loader import ConfigError, add_config_arguments
from pipeline.data import ShowerStream, StreamError
from pipeline.distributed import DistEnv, DistributedError, discover
from pipeline.run_layout import DONE_FILE, REQUEUE_FILE
from pipeline.store import ShowerStore, StoreError

EXIT_DONE, EXIT_CONFIG, EXIT_NONFINITE, EXIT_REQUEUE = 0, 2, 3, 75
_IMPORTED = time.monotonic()  # ~ start of the command: --time-limit counts from here


@dataclass
class TrainResult:
    """How :func:`train` ended: ``done``, ``stopped`` (signal or time limit) or ``nonfinite``."""

    status: Literal["done", "stopped", "nonfinite"]
    step: int
    run_dir: Path
    reason: str = ""

    @property
    def exit_code(self) -> int:
        return {"done": EXIT_DONE, "stopped": EXIT_REQUEUE, "nonfinite": EXIT_NONFINITE}[self.status]


def parse_duration(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``30m``, ``2h``, ``1.5h``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    s = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([smhd]?)", s)
    if m:
        return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if m and m.group(3) is not None:
        days, parts = int(m.group(1) or 0), [int(p) for p in m.group(2, 3, 4) if p is not None]
        if m.group(1) is None and len(parts) == 2:
            parts = [0] + parts  # MM:SS
        hours, minutes, seconds = parts if len(parts) == 3 else (parts + [0])
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    raise ValueError(f"cannot parse time limit {text!r} (examples: 3600, 90m, 2h, 3:55:00, 1-00:00:00)")


def preflight(cfg: Config, world_size: int) -> ShowerStore:
    """Every check that needs no process group; raises ConfigError, StoreError or StreamError."""
    per_rank = cfg.per_rank_batch(world_size)
    store = ShowerStore(cfg.data.store)
    stored = store.attrs.get("geometry", {}).get("name")
    if stored != cfg.data.geometry:
        raise ConfigError(f"data.geometry: the config says {cfg.data.geometry} but {store.path} holds {stored} showers")
    ShowerStream(store, per_rank, split="train", world_size=world_size, seed=cfg.run.seed)
    if cfg.train.val_every_steps:
        if not store.chunk_ids("validation"):
            raise ConfigError(f"train.val_every_steps: {store.path} has no validation split; set it to 0 or "
                              f"convert with data.validation_fraction > 0")
        ShowerStream(store, per_rank, split="validation", world_size=world_size, shuffle=False)
    if cfg.train.init_from:
        resolve_init_from(cfg.train.init_from)
    check_resumable(cfg.run.dir, world_size, cfg.train.zero_stage)
    return store


def read_done(run_dir: str | Path) -> dict[str, Any] | None:
    """``DONE.json`` of a finished run, with ``ema``, ``config`` and ``checkpoint`` as absolute paths."""
    path = Path(run_dir) / DONE_FILE
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    for key in ("ema", "config", "checkpoint"):
        done[key] = str((Path(run_dir) / done[key]).resolve())
    return done


def seed_for(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (run seed, rank, purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def train(cfg: Config, *, config_path: str | None = None, time_limit: float | None = None,
          env: DistEnv | None = None, started: float | None = None, teacher: Any = None) -> TrainResult:
    """Train (or resume, or confirm done) the run ``cfg.run.dir``; see the module doc for behaviour and layout.

    ``time_limit`` (seconds) counts from ``started`` (``time.monotonic()``; default: now). ``teacher``
    (:class:`pipeline.trainer.Teacher`) makes the run a distillation stage (see :mod:`pipeline.distill`).
    """
    started = time.monotonic() if started is None else started
    env = env or discover()
    done = read_done(cfg.run.dir)
    if done is not None and done["step"] >= cfg.train.max_steps:
        if env.is_main:
            print(f"train: {cfg.run.dir} is already complete ({done['step']} steps; {DONE_FILE})", file=sys.stderr)
        return TrainResult("done", done["step"], Path(cfg.run.dir), "already complete")
    store = preflight(cfg, env.world_size)
    from pipeline import distributed
    from pipeline.trainer import Trainer

    with StopSignals() as signals:  # from here on SIGUSR1/SIGTERM mean: checkpoint at the next step, exit 75
        distributed.init_distributed(env)
        try:
            trainer = Trainer(cfg, env, store, config_path=config_path, started=started, time_limit=time_limit,
                              teacher=teacher)
            return trainer.run(signals)
        finally:
            distributed.shutdown()


def write_done(cfg: Config, run_dir: Path, config_path: str | None, **fields: Any) -> Path:
    """Write ``DONE.json`` atomically (paths inside the run directory are relative to it)."""
    from pipeline.ema import atomic_write_json, utc_now

    done = {"status": "done", "config": "config.yaml", "config_source": config_path,
            "store": str(Path(cfg.data.store).resolve()), "geometry": cfg.data.geometry,
            "preset": cfg.model.preset, "max_steps": cfg.train.max_steps,
            "finished_at": utc_now(), **fields}
    atomic_write_json(run_dir / DONE_FILE, done)
    return run_dir / DONE_FILE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--max-steps", type=int, help="total optimiser steps (same as --set train.max_steps=N)")
    parser.add_argument("--time-limit", help="stop with a checkpoint before this much wall time (e.g. 3:55:00, 90m)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"train.max_steps={args.max_steps}"] if args.max_steps is not None else [])
    try:
        cfg = load_config(args.config, overrides)
        try:
            limit = parse_duration(args.time_limit) if args.time_limit else None
        except ValueError as err:
            raise ConfigError(f"--time-limit: {err}") from None
        result = train(cfg, config_path=args.config, time_limit=limit, started=_IMPORTED)
    except (ConfigError, StoreError, StreamError, DistributedError, CheckpointError) as err:
        print(f"train: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    return result.exit_code


__all__ = ["train", "main", "preflight", "read_done", "parse_duration", "TrainResult", "EXIT_DONE", "EXIT_CONFIG",
           "EXIT_NONFINITE", "EXIT_REQUEUE"]

if __name__ == "__main__":
    sys.exit(main())
