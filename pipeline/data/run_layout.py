"""Where each stage of a run puts its outputs, and how a stage knows it is finished.

    <run.dir>/                     training run (config.yaml, checkpoints/, ema/, logs/, DONE.json)
    <run.dir>/distill/stage_K/     distillation stage K (same layout, DONE.json names its steps)
    <run.dir>/samples/generated.zarr   generated sample (+ .blocks/ markers, .manifest.json
                                       written last)
    <run.dir>/samples/generated.hdf5   its CaloChallenge HDF5 export
    <run.dir>/evaluation/          report and plots (report.json written last)
    <run.dir>/launch/              pipeline.launch: jobs.json, config.yaml, logs/

Every stage writes its completion marker last and atomically, so ``pipeline.launch`` and the demo
skip exactly the finished stages. ``DONE.json`` of a training run or distillation stage is a
:class:`pipeline.data.run_record.RunRecord` (distillation reads its teacher's, generation its
model's).
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import Config, ConfigError
from pipeline.data.run_record import DONE_FILE  # noqa: F401  (marker of a finished run or stage)

REQUEUE_FILE = "REQUEUE"  # stopped early with a checkpoint: re-run to continue
REPORT_FILE = "report.json"


def train_dir(cfg: Config) -> Path:
    return Path(cfg.run.dir)


def distill_dir(cfg: Config, stage: int) -> Path:
    """Run directory of distillation stage ``stage`` (0: the training run itself)."""
    return train_dir(cfg) if stage == 0 else train_dir(cfg) / "distill" / f"stage_{stage}"


def n_stages(cfg: Config) -> int:
    return len(cfg.distill.student_steps(cfg.sampling.steps))


def stage_steps(cfg: Config, stage: int) -> int:
    """Sampling steps of stage ``stage`` (0: the teacher's ``sampling.steps``)."""
    if not 0 <= stage <= n_stages(cfg):
        raise ConfigError(f"stage {stage}: this config has stages 0..{n_stages(cfg)} "
                          f"(sampling.steps {cfg.sampling.steps} -> distill.final_steps "
                          f"{cfg.distill.final_steps})")
    return cfg.sampling.steps >> stage


def model_dir(cfg: Config, model: str | None = None) -> Path:
    """The run directory of ``generate.model`` (or ``model``): final, teacher, stage_K or a path."""
    name = model or cfg.generate.model
    if name == "final":
        return distill_dir(cfg, n_stages(cfg))
    if name == "teacher":
        return train_dir(cfg)
    match = re.fullmatch(r"stage_(\d+)", name)
    if match:
        stage = int(match.group(1))
        stage_steps(cfg, stage)  # range check
        return distill_dir(cfg, stage)
    return Path(name)


def sample_path(cfg: Config) -> Path:
    return (Path(cfg.generate.out) if cfg.generate.out
            else train_dir(cfg) / "samples" / "generated.zarr")


def sample_manifest(sample: str | Path) -> Path:
    """``SAMPLE.manifest.json`` beside a generated sample: written last, it marks the sample
    complete."""
    sample = Path(sample)
    return sample.with_name(sample.name + ".manifest.json")


def sample_blocks_dir(sample: str | Path) -> Path:
    """``SAMPLE.blocks/`` beside a generated sample: a marker per finished block (outside the zarr
    hierarchy)."""
    sample = Path(sample)
    return sample.with_name(sample.name + ".blocks")


def export_path(cfg: Config) -> Path:
    return (Path(cfg.generate.export) if cfg.generate.export
            else sample_path(cfg).with_suffix(".hdf5"))


def export_index(export: str | Path) -> Path:
    """``STEM.files.json`` beside a multi-file export ``STEM_1.hdf5``, ``STEM_2.hdf5``, ...: written
    last, it lists the files and marks the export complete."""
    export = Path(export)
    return export.with_name(export.stem + ".files.json")


def export_marker(cfg: Config) -> Path:
    """What marks the export stage done: the HDF5 file, or the index of a multi-file export."""
    return export_index(export_path(cfg)) if cfg.generate.export_rows_per_file else export_path(cfg)


def launch_dir(cfg: Config) -> Path:
    """``pipeline.launch``'s files: jobs.json, the resolved config every job reads, job logs."""
    return train_dir(cfg) / "launch"


def evaluation_dir(cfg: Config) -> Path:
    return Path(cfg.evaluate.out) if cfg.evaluate.out else train_dir(cfg) / "evaluation"
