"""Train the layer-energy network and the voxel U-Net on a zarr store, on one CPU process or
many GPUs.

    python -m pipeline.train --config configs/ds3.yaml [--set train.lr=1e-4] [--max-steps N]
                             [--time-limit 3:55:00]
    torchrun --nproc_per_node 8 -m pipeline.train --config configs/ds3.yaml
                             # or srun / mpirun / submitit

Re-running the same command resumes from the newest checkpoint: weights, AdamW state, LR schedule,
EMA, step counters, every rank's RNG states and the data stream's position, so on CPU an interrupted
and resumed run ends bit-identical to an uninterrupted one. Ranks come from
:mod:`pipeline.runtime.distributed`, the loop from :mod:`.trainer`, the engine from :mod:`.engine`,
checkpoints from :mod:`.checkpoint`, logs from :mod:`.metrics_log`. Config mistakes (batch not
divisible over the ranks, missing or incomplete store, geometry mismatch, too little data for the
ranks) are reported before any process group starts.

Run directory (``run.dir``)::

    config.yaml                          resolved config
    checkpoints/                         see .checkpoint
    REQUEUE                              stopped early; re-run
    logs/metrics.csv, logs/tensorboard/  metrics
    ema/ema_step_NNNNNNNN.safetensors    EMA export (+ .pt fallback)
    DONE.json                            written last, atomically

Exit codes (:mod:`pipeline.runtime.exit_codes`): ``0`` complete (``DONE.json`` written) or already
complete; ``2`` config, store or launcher error, before any process group starts; ``3`` non-finite
loss (``latest`` still names the last good checkpoint); ``75`` stopped early on SIGUSR1/SIGTERM or
before ``--time-limit`` after writing a checkpoint and the ``REQUEUE`` marker (JSON: reason, step,
checkpoint): re-run or requeue.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

from pipeline.config import Config, ConfigError, add_config_arguments, load_config
from pipeline.data.run_record import DONE_FILE, read_record
from pipeline.data.shower_store import ShowerStore, StoreError
from pipeline.data.stream import ShowerStream, StreamError
from pipeline.runtime import distributed
from pipeline.runtime.distributed import DistEnv, DistributedError, discover
from pipeline.runtime.exit_codes import EXIT_CONFIG, EXIT_STORAGE
from pipeline.runtime.signals import StopSignals
from pipeline.runtime.time_limit import COMMAND_STARTED, parse_duration
from pipeline.training.checkpoint import CheckpointError, check_resumable, resolve_init_from
from pipeline.training.initial_weights import Teacher
from pipeline.training.results import TrainResult
from pipeline.training.trainer import Trainer


def preflight(cfg: Config, world_size: int) -> ShowerStore:
    """Every check that needs no process group; raises ConfigError, StoreError or StreamError."""
    per_rank = cfg.per_rank_batch(world_size)
    store = ShowerStore(cfg.data.store)
    stored = store.attrs.get("geometry", {}).get("name")
    if stored != cfg.data.geometry:
        raise ConfigError(f"data.geometry: the config says {cfg.data.geometry} but {store.path} "
                          f"holds {stored} showers")
    ShowerStream(store, per_rank, split="train", world_size=world_size, seed=cfg.run.seed)
    if cfg.train.validation.every_steps:
        if not store.chunk_ids("validation"):
            raise ConfigError(f"train.validation.every_steps: {store.path} has no validation "
                              f"split; set it to 0 or convert with data.validation_fraction > 0")
        ShowerStream(store, per_rank, split="validation", world_size=world_size, shuffle=False)
    if cfg.train.init_from:
        resolve_init_from(cfg.train.init_from)
    check_resumable(cfg.run.dir, world_size, cfg.train.zero_stage)
    return store


def train(cfg: Config, *, config_path: str | None = None, time_limit: float | None = None,
          env: DistEnv | None = None, started: float | None = None,
          teacher: Teacher | None = None) -> TrainResult:
    """Train (or resume, or confirm done) the run ``cfg.run.dir``; see the module doc for behaviour
    and layout.

    ``time_limit`` (seconds) counts from ``started`` (``time.monotonic()``; default: now).
    ``teacher`` (:class:`.initial_weights.Teacher`) makes the run a distillation stage (see
    :mod:`.distill_command`).
    """
    started = time.monotonic() if started is None else started
    env = env or discover()
    done = read_record(cfg.run.dir)
    if done is not None and done.step >= cfg.train.max_steps:
        if env.is_main:
            print(f"train: {cfg.run.dir} is already complete ({done.step} steps; {DONE_FILE})",
                  file=sys.stderr)
        return TrainResult("done", done.step, Path(cfg.run.dir), "already complete")
    store = preflight(cfg, env.world_size)
    # from here on SIGUSR1/SIGTERM mean: checkpoint at the next step, exit 75
    with StopSignals() as signals:
        distributed.init_distributed(
            env, timeout=timedelta(minutes=cfg.train.collective_timeout_minutes))
        try:
            trainer = Trainer(cfg, env, store, config_path=config_path, started=started,
                              time_limit=time_limit, teacher=teacher)
            return trainer.run(signals)
        finally:
            distributed.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--max-steps", type=int,
                        help="total optimiser steps (same as --set train.max_steps=N)")
    parser.add_argument("--time-limit", help="stop with a checkpoint before this much wall time "
                                             "(e.g. 3:55:00, 90m)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"train.max_steps={args.max_steps}"]
                                        if args.max_steps is not None else [])
    return run_command("train", args.config, overrides, args.time_limit, lambda cfg, limit: train(
        cfg, config_path=args.config, time_limit=limit, started=COMMAND_STARTED))


def run_command(prog: str, config: str, overrides: Sequence[str], time_limit: str | None,
                run: Callable[[Config, float | None], TrainResult]) -> int:
    """Load the config, read ``--time-limit`` and ``run``; an expected failure is one line and an
    exit code."""
    try:
        cfg = load_config(config, overrides)
        try:
            limit = parse_duration(time_limit) if time_limit else None
        except ValueError as err:
            raise ConfigError(f"--time-limit: {err}") from None
        return run(cfg, limit).exit_code
    except (ConfigError, StoreError, StreamError, DistributedError, CheckpointError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:
        # disk full, I/O error: `latest` still names the last complete checkpoint
        print(f"{prog}: error: writing {err.filename or 'the run directory'} failed: "
              f"{err.strerror or err}; the last complete checkpoint is kept (checkpoints/latest) "
              f"and a re-run resumes from it once this is fixed", file=sys.stderr)
        return EXIT_STORAGE
