"""Progressive distillation, one stage per job: stage k's student has half the DDIM steps of
stage k - 1.

    python -m pipeline.distill --config configs/ds3.yaml --stage 1 [--set distill.max_steps=...]
                               [--time-limit 3:55:00]
    srun python -m pipeline.distill --config configs/ds3.yaml --stage 2
                               # any launcher pipeline.train accepts

Stage k reads ``DONE.json`` of stage k - 1 (stage 0 is the training run, ``run.dir``), starts the
student and its EMA from the teacher's EMA weights and trains it with
:func:`pipeline.diffusion.distillation_losses` (Salimans & Ho: one student step matches two teacher
steps) using the training engine, so checkpoints, resume, preemption, exit codes and the run
directory are exactly those of ``pipeline.train``. The stage runs in
``<run.dir>/distill/stage_<k>/`` with the ``distill`` section's steps, learning rate, warm-up and
EMA decay; its ``DONE.json`` (:class:`~pipeline.data.run_record.RunRecord`) names its ``stage`` and
``teacher``. The number of stages follows from ``sampling.steps`` and ``distill.final_steps``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

from pipeline.config import Config, ConfigError, add_config_arguments
from pipeline.data import run_layout
from pipeline.data.run_record import RunRecord, read_record
from pipeline.runtime.seeds import seed_for
from pipeline.runtime.time_limit import COMMAND_STARTED
from pipeline.training.initial_weights import Teacher
from pipeline.training.results import TrainResult
from pipeline.training.train_command import run_command, train

# seed purpose: each stage's noise differs from training's and from the other stages'
_STAGE_SEED = 11


def stage_config(cfg: Config, stage: int) -> Config:
    """The training config of distillation stage ``stage`` (>= 1): its run directory, steps and
    optimiser."""
    if stage < 1:
        raise ConfigError(f"--stage: distillation stages start at 1 (stage 0 is pipeline.train), "
                          f"got {stage}")
    steps = run_layout.stage_steps(cfg, stage)
    return dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, dir=str(run_layout.distill_dir(cfg, stage)),
                                     seed=seed_for(cfg.run.seed, _STAGE_SEED, stage) % 2**31),
        sampling=dataclasses.replace(cfg.sampling, steps=steps),
        train=dataclasses.replace(cfg.train, **cfg.distill.schedule(), init_from=None))


def teacher_of(cfg: Config, stage: int) -> RunRecord:
    """The record of stage ``stage - 1``; raises if it has not finished."""
    previous = run_layout.distill_dir(cfg, stage - 1)
    done = read_record(previous)
    if done is None:
        how = ("python -m pipeline.train" if stage == 1
               else f"python -m pipeline.distill --stage {stage - 1}")
        raise ConfigError(f"--stage {stage}: its teacher (stage {stage - 1}) has not finished: "
                          f"no {run_layout.DONE_FILE} in {previous}; "
                          f"run `{how}` with this config first")
    expected = run_layout.stage_steps(cfg, stage - 1)
    if done.sample_steps != expected:
        raise ConfigError(f"--stage {stage}: the teacher in {previous} samples with "
                          f"{done.sample_steps} steps, but this config's stage {stage - 1} has "
                          f"{expected} (sampling.steps changed?)")
    return done


def distill(cfg: Config, stage: int, *, config_path: str | None = None,
            time_limit: float | None = None, started: float | None = None) -> TrainResult:
    """Run (or resume, or confirm done) distillation stage ``stage`` of the run ``cfg.run.dir``."""
    stage_cfg = stage_config(cfg, stage)
    done = teacher_of(cfg, stage)
    teacher = Teacher(done.ema, stage_cfg.sampling.steps, stage,
                      run_layout.distill_dir(cfg, stage - 1).resolve(), done.sample_steps,
                      done.ema_sha256)
    return train(stage_cfg, config_path=config_path, time_limit=time_limit, started=started,
                 teacher=teacher)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--stage", type=int, required=True,
                        help="stage number, 1 .. number of stages")
    parser.add_argument("--time-limit", help="stop with a checkpoint before this much wall time "
                                             "(e.g. 3:55:00, 90m)")
    args = parser.parse_args(argv)
    return run_command("distill", args.config, args.overrides, args.time_limit,
                       lambda cfg, limit: distill(cfg, args.stage, config_path=args.config,
                                                  time_limit=limit, started=COMMAND_STARTED))
