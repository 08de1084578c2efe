"""The main job on the embedded default: the whole chain on one config, on this machine.

    python -m pipeline.demo --config configs/smoke.yaml [--set KEY=VALUE ...]

Simulates the stand-in inputs and the stand-in evaluation reference (when configured and missing),
converts the inputs into the zarr store and streams both splits once (in this process, printing a
summary), then runs every later stage as a cluster job would run it, as
``python -m <stage> --config ...`` subprocesses in the order of :func:`pipeline.launch.plan.chain`:
train, distill stages 1..K, generate, export, evaluate. Every stage is idempotent, so re-running
resumes where the last run stopped and skips what is finished. Ends by printing where the sample,
the report and the plots are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Sequence

from data_tools.convert import convert
from data_tools.inspect import summarize
from data_tools.standin import prepare_standins
from pipeline.config import Config, ConfigError, add_config_arguments, load_config
from pipeline.data import run_layout
from pipeline.data.calochallenge_hdf5 import InputError
from pipeline.data.run_record import read_record
from pipeline.data.shower_store import StoreError
from pipeline.data.stream import ShowerStream
from pipeline.launch.plan import Stage, chain


def stream_once(cfg: Config, split: str) -> tuple[int, float]:
    """Read one epoch of ``split``; returns (showers read, seconds)."""
    d = cfg.data
    stream = ShowerStream(d.store, d.global_batch_size, split=split, seed=cfg.run.seed,
                          shuffle=split == "train", shuffle_chunks=d.shuffle_chunks,
                          num_workers=d.num_workers, prefetch_chunks=d.prefetch_chunks,
                          resident=d.resident, epochs=1)
    t0, n = time.perf_counter(), 0
    for batch in stream:
        n += len(batch["index"])
    return n, time.perf_counter() - t0


def run_stage(stage: Stage, config_path: str, overrides: Sequence[str]) -> float:
    """Run one stage's command (output passes through); returns its wall time in seconds."""
    cmd = stage.command(config_path, sys.executable)
    for assignment in overrides:
        cmd += ["--set", assignment]
    print(f"[demo] {stage.name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage.name} exited with code {proc.returncode}; fix the cause "
                           f"and re-run the demo to resume")
    return time.perf_counter() - t0


def summary(cfg: Config) -> list[str]:
    """What each finished stage produced, in a few lines."""
    lines = []
    for k in range(run_layout.n_stages(cfg) + 1):
        done = read_record(run_layout.distill_dir(cfg, k))
        assert done is not None, "summary() runs after every stage finished"
        what = "trained" if k == 0 else f"distilled (stage {k})"
        lines.append(f"{what}: {done.sample_steps} sampling steps, {done.step} optimiser steps, "
                     f"final loss {done.final_losses.get('train_loss', float('nan')):.4f} -> "
                     f"{run_layout.distill_dir(cfg, k)}")
    sample = run_layout.sample_path(cfg)
    manifest = json.loads(run_layout.sample_manifest(sample).read_text())
    lines.append(f"generated: {manifest['n']} showers with the {manifest['sample_steps']}-step "
                 f"model, {manifest['timing']['ms_per_shower_per_rank']:.1f} ms per shower -> "
                 f"{sample}")
    lines.append(f"exported: {run_layout.export_path(cfg)}")
    out = run_layout.evaluation_dir(cfg)
    report = json.loads((out / run_layout.REPORT_FILE).read_text())
    aucs = {k: v.get("auc_mean", v.get("auc")) for k, v in report.get("classifier", {}).items()}
    auc = ", ".join(f"{k}-level classifier AUC {v:.3f}" for k, v in aucs.items()
                    if isinstance(v, float))
    lines.append(f"evaluated: {out / 'report.md'} ({auc or 'no classifiers'}); "
                 f"{len(report.get('plots', []))} plots in {out}")
    return lines


def run(cfg: Config, config_path: str, overrides: Sequence[str] = ()) -> None:
    t_start = time.perf_counter()
    d = cfg.data
    prepare_standins(cfg)
    print(f"[demo] converting {len(d.inputs)} file(s) -> {d.store}", flush=True)
    convert(d.inputs, d.store, d.geometry, layout=d.layout,
            validation_fraction=d.validation_fraction, split_seed=d.split_seed)
    info = summarize(d.store)
    print(f"[demo] store: {info['n']} showers {info['shape'][1:]}, "
          f"{info['size_bytes'] / 2**20:.1f} MiB (x{info['compression_ratio']} vs float32), "
          f"zero fraction {info['zero_fraction_train']:.3f}, "
          f"mean E_tot/E_inc {info['etot_over_einc_mean_train']:.3f}")
    for split in ("train", "validation"):
        n, seconds = stream_once(cfg, split)
        print(f"[demo] streamed {split}: {n} showers in {seconds:.2f} s "
              f"({n / seconds:.0f} showers/s)")
    for stage in chain(cfg)[1:]:
        if stage.is_done():
            print(f"[demo] {stage.name}: already complete ({stage.marker})")
            continue
        seconds = run_stage(stage, config_path, overrides)
        print(f"[demo] {stage.name}: done in {seconds:.0f} s", flush=True)
    print(f"[demo] finished in {time.perf_counter() - t_start:.0f} s:")
    for line in summary(cfg):
        print(f"[demo]   {line}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo",
                                description=__doc__.split("\n\n")[0])
    add_config_arguments(p)
    args = p.parse_args(argv)
    try:
        run(load_config(args.config, args.overrides), args.config, args.overrides)
    except (ConfigError, InputError, StoreError, OSError, RuntimeError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1
    return 0
