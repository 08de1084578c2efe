"""The main job on the embedded default: the pipeline's stages in order on one config.

    python -m pipeline.demo --config configs/smoke.yaml

Stages so far: simulate stand-in inputs (when configured and missing), convert them into the zarr
store, stream the training and validation splits once, then train the models (``pipeline.train``
in a subprocess, as a cluster job would run it). Every stage is idempotent, so re-running resumes
where the last run stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from data_tools.calochallenge_hdf5 import InputError
from data_tools.convert import convert
from data_tools.inspect import summarize
from pipeline.config import Config, load_config, save_resolved
from pipeline.config_loader import ConfigError, add_config_arguments
from pipeline.data import ShowerStream
from pipeline.store import StoreError


def ensure_inputs(cfg: Config) -> None:
    """Simulate the stand-in input file if the config asks for one and it is missing."""
    missing = [p for p in cfg.data.inputs if not Path(p).is_file()]
    if not missing:
        return
    if cfg.data.standin is None:
        raise InputError(f"data.inputs: {missing[0]} does not exist (and data.standin is not set to simulate it)")
    from data_tools.simulate import simulate_file

    s = cfg.data.standin
    print(f"[demo] simulating {s.n} stand-in {cfg.data.geometry} showers -> {missing[0]}")
    Path(missing[0]).parent.mkdir(parents=True, exist_ok=True)
    simulate_file(missing[0], cfg.data.geometry, s.n, seed=s.seed, workers=s.workers)


def stream_once(cfg: Config, split: str) -> tuple[int, float]:
    """Read one epoch of ``split``; returns (showers read, seconds)."""
    d = cfg.data
    stream = ShowerStream(d.store, d.batch_size, split=split, seed=cfg.run.seed, shuffle=split == "train",
                          shuffle_chunks=d.shuffle_chunks, num_workers=d.num_workers,
                          prefetch_chunks=d.prefetch_chunks, resident=d.resident, epochs=1)
    t0, n = time.perf_counter(), 0
    for batch in stream:
        n += len(batch["index"])
    return n, time.perf_counter() - t0


def train_stage(config_path: str, overrides: Sequence[str]) -> None:
    """``python -m pipeline.train`` with the same config; resumes or skips a finished run."""
    cmd = [sys.executable, "-m", "pipeline.train", "--config", config_path]
    for assignment in overrides:
        cmd += ["--set", assignment]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"training exited with code {proc.returncode}; re-run the demo to resume")


def run(cfg: Config, config_path: str, overrides: Sequence[str] = ()) -> None:
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[demo] resolved config -> {save_resolved(cfg)}")
    ensure_inputs(cfg)
    d = cfg.data
    print(f"[demo] converting {len(d.inputs)} file(s) -> {d.store}")
    convert(d.inputs, d.store, d.geometry, layout=d.layout, validation_fraction=d.validation_fraction,
            split_seed=d.split_seed)
    summary = summarize(d.store)
    print(f"[demo] store: {summary['n']} showers {summary['shape'][1:]}, {summary['size_bytes'] / 2**20:.1f} MiB "
          f"(x{summary['compression_ratio']} vs float32), zero fraction {summary['zero_fraction_train']:.3f}, "
          f"mean E_tot/E_inc {summary['etot_over_einc_mean_train']:.3f}")
    for split in ("train", "validation"):
        n, seconds = stream_once(cfg, split)
        print(f"[demo] streamed {split}: {n} showers in {seconds:.2f} s ({n / seconds:.0f} showers/s)")
    print(f"[demo] training {cfg.model.preset} models for {cfg.train.max_steps} steps -> {run_dir}")
    train_stage(config_path, overrides)
    done = json.loads((run_dir / "DONE.json").read_text())
    print(f"[demo] trained: step {done['step']}, EMA weights {run_dir / done['ema']}, logs {run_dir / 'logs'}")
    print(f"[demo] done; outputs under {run_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.split("\n\n")[0])
    add_config_arguments(p)
    args = p.parse_args(argv)
    try:
        run(load_config(args.config, args.overrides), args.config, args.overrides)
    except (ConfigError, InputError, StoreError, OSError, RuntimeError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
