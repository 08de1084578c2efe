"""``DONE.json``: the record a finished training run or distillation stage hands to the next
stage.

Written once, last and atomically, by the trainer (:meth:`RunRecord.write`); read by distillation
(its teacher's), generation (its model's), ``pipeline.launch``, the demo and the benchmarks
(:func:`read_record`). Paths inside the run directory are stored relative to it and read back as
absolute paths. Files written before the record had a version (version 1: no ``record_version``
key, no distillation fields on a training run) are still read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.config import RESOLVED_CONFIG, Config, ConfigError
from pipeline.runtime.files import atomic_write_json, utc_now

DONE_FILE = "DONE.json"
RECORD_VERSION = 2
_PATHS = ("ema", "config", "checkpoint")  # relative to the run directory in the file


class RunRecordError(ConfigError):
    """A ``DONE.json`` that is not a run record this code can read (the stages report it as an
    input error)."""


@dataclass(frozen=True)
class RunRecord:
    """What a finished run is: where its weights are, what it trained, how, and (distillation)
    from what."""

    step: int  # optimiser steps done
    samples: int  # showers seen
    epoch: int
    ema: Path  # the EMA export generation and distillation load
    checkpoint: Path  # the last DeepSpeed checkpoint
    config: Path  # the run's resolved config.yaml
    config_source: Optional[str]  # the file it was made from
    store: str
    geometry: str
    preset: str
    max_steps: int
    world_size: int
    zero_stage: int
    precision: str
    launcher: str
    networks: tuple[str, ...]  # trained networks: "layers", "voxels"
    sample_steps: int  # the DDIM steps this run's networks sample with
    final_losses: dict[str, float] = field(default_factory=dict)
    ema_sha256: Optional[str] = None
    weights_sha256: Optional[str] = None
    ema_format: str = "safetensors"
    stage: int = 0  # 0: a training run; K: distillation stage K
    teacher: Optional[str] = None  # stage K >= 1: the run directory of stage K - 1
    teacher_steps: Optional[int] = None
    teacher_ema_sha256: Optional[str] = None
    finished_at: str = field(default_factory=utc_now)
    ranks_agree: bool = True

    def write(self, run_dir: str | Path) -> Path:
        """``<run_dir>/DONE.json``, atomically; paths under ``run_dir`` are stored relative to
        it."""
        run_dir = Path(run_dir)
        record: dict[str, Any] = {"status": "done", "record_version": RECORD_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _PATHS:
                value = _relative(Path(value), run_dir)
            record[f.name] = list(value) if isinstance(value, tuple) else value
        atomic_write_json(run_dir / DONE_FILE, record)
        return run_dir / DONE_FILE

    @classmethod
    def of_export(cls, cfg: Config, run_dir: Path, ema: Path, *, sample_steps: int,
                  config_source: Optional[str] = None) -> RunRecord:
        """The record of a run put together from an EMA export without training (tests,
        benchmarks)."""
        return cls(step=0, samples=0, epoch=0, ema=ema, checkpoint=run_dir / "none",
                   config=run_dir / RESOLVED_CONFIG, config_source=config_source,
                   store=str(Path(cfg.data.store).resolve()), geometry=cfg.data.geometry,
                   preset=cfg.model.preset, max_steps=0, world_size=1, zero_stage=0,
                   precision="fp32", launcher="none", networks=("layers", "voxels"),
                   sample_steps=sample_steps)


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def read_record(run_dir: str | Path) -> RunRecord | None:
    """The record of a finished run (absolute paths), or None when ``run_dir`` has no
    ``DONE.json``."""
    run_dir = Path(run_dir)
    path = run_dir / DONE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunRecordError(f"{path}: not JSON ({err})") from None
    version = raw.get("record_version", 1) if isinstance(raw, dict) else None
    if version is None or raw.get("status") != "done" or version > RECORD_VERSION:
        raise RunRecordError(f"{path}: not a run record this version reads (expected a JSON "
                             f"object with status 'done' and record_version <= {RECORD_VERSION})")
    names = {f.name for f in dataclasses.fields(RunRecord)}
    values = {k: v for k, v in raw.items() if k in names}
    # before the record: a training run had no stage or sample_steps, no networks before both
    if version == 1:
        values.setdefault("networks", ["layers", "voxels"])
        values.setdefault("sample_steps",
                          _config_sample_steps(run_dir / raw.get("config", RESOLVED_CONFIG)))
    missing = sorted(f.name for f in dataclasses.fields(RunRecord)
                     if f.name not in values and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise RunRecordError(f"{path}: missing {', '.join(missing)}")
    for name in _PATHS:
        values[name] = (run_dir / values[name]).resolve()
    values["networks"] = tuple(values["networks"])
    return RunRecord(**values)


def _config_sample_steps(config: Path) -> int:
    import yaml

    try:
        return int(yaml.safe_load(config.read_text())["diffusion"]["sample_steps"])
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise RunRecordError(f"{config}: cannot read diffusion.sample_steps (now sampling.steps) "
                             f"of this older run ({err})") from None
