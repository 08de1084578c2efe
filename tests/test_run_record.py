"""DONE.json as a typed, versioned record: written and read in one module, older files still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.data.run_record import (
    DONE_FILE,
    RECORD_VERSION,
    RunRecord,
    RunRecordError,
    read_record,
)

from conftest import REPO


def record(run_dir: Path, **changes) -> RunRecord:
    fields = dict(step=12, samples=48, epoch=1, ema=run_dir / "ema" / "ema_step_00000012.safetensors",
                  checkpoint=run_dir / "checkpoints" / "step_00000012", config=run_dir / "config.yaml",
                  config_source="configs/smoke.yaml", store="/data/store.zarr", geometry="ds2", preset="tiny",
                  max_steps=12, world_size=2, zero_stage=2, precision="bf16", launcher="slurm",
                  networks=("layers", "voxels"), sample_steps=8, final_losses={"train_loss": 0.5},
                  ema_sha256="ab" * 32)
    fields.update(changes)
    return RunRecord(**fields)


def test_round_trip_with_paths_relative_in_the_file(tmp_path):
    original = record(tmp_path, stage=2, teacher=str(tmp_path / "distill" / "stage_1"), teacher_steps=16)
    original.write(tmp_path)
    raw = json.loads((tmp_path / DONE_FILE).read_text())
    assert raw["record_version"] == RECORD_VERSION and raw["status"] == "done"
    assert raw["ema"] == "ema/ema_step_00000012.safetensors" and raw["config"] == "config.yaml"
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    shutil.copytree(tmp_path, moved)  # a run directory moved elsewhere reads its own files
    again = read_record(moved)
    assert again == record(moved.resolve(), stage=2, teacher=str(tmp_path / "distill" / "stage_1"), teacher_steps=16,
                           finished_at=original.finished_at)
    assert again.ema == moved.resolve() / "ema" / "ema_step_00000012.safetensors" and again.ema.is_absolute()


def test_no_record_is_none(tmp_path):
    assert read_record(tmp_path) is None


def test_older_files_still_read():
    """The committed golden run was written before the record had a version."""
    done = read_record(REPO / "tests" / "data" / "voxel_golden")
    assert done is not None and done.step == 3000 and done.networks == ("voxels",) and done.sample_steps == 4
    assert done.ema.is_file() and done.stage == 0 and done.teacher is None


def test_the_oldest_files_take_their_steps_from_the_config(tmp_path):
    raw = {k: v for k, v in json.loads((REPO / "tests/data/voxel_golden" / DONE_FILE).read_text()).items()
           if k not in ("sample_steps", "networks", "stage")}
    (tmp_path / DONE_FILE).write_text(json.dumps(raw))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"diffusion": {"sample_steps": 32}}))
    done = read_record(tmp_path)
    assert done.sample_steps == 32 and done.networks == ("layers", "voxels") and done.stage == 0


@pytest.mark.parametrize("content, message", [
    ("{", "not JSON"),
    ("[1, 2]", "not a run record"),
    (json.dumps({"status": "stopped"}), "not a run record"),
    (json.dumps({"status": "done", "record_version": RECORD_VERSION + 1}), "record_version"),
    (json.dumps({"status": "done", "record_version": RECORD_VERSION, "step": 3}), "missing checkpoint, config, "),
])
def test_bad_records_name_the_file_and_the_problem(tmp_path, content, message):
    (tmp_path / DONE_FILE).write_text(content)
    with pytest.raises(RunRecordError, match=message) as err:
        read_record(tmp_path)
    assert str(tmp_path / DONE_FILE) in str(err.value)
