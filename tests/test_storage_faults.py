"""Storage faults: a full disk (a real size-limited tmpfs) while writing a checkpoint, a store shard
or an export, and a checkpoint damaged after it was written. Each ends in a clear error (exit 74),
keeps what was complete (the previous checkpoint and ``latest``, finished shards), publishes nothing
half-written, and the same command finishes the work once there is space. The generated-sample case
is in test_generate.py."""

from __future__ import annotations

import json

import h5py
import pytest
import zarr
from train_runs import ONE_THREAD, latest_step, run_train, write_config

from pipeline.data.run_record import read_record
from pipeline.runtime.exit_codes import EXIT_STORAGE
from pipeline.training.checkpoint import Checkpointer

from conftest import make_generated, run_module, tree_bytes, write_random_showers

pytestmark = pytest.mark.slow


def test_checkpoint_on_a_full_disk_keeps_the_previous_one_and_resumes(tmp_path, store, small_fs):
    """A checkpoint of the tiny ds2 pair is ~12.6 MB: 20 MB holds the first (step 2), not the
    second."""
    disk = small_fs.mount("disk", "20m")
    run = disk / "run"
    cfg = write_config(tmp_path / "c.yaml", store, run, max_steps=4, checkpoint_every_steps=2,
                       validation={"every_steps": 0})
    full = run_train(cfg, **ONE_THREAD)
    assert full.returncode == EXIT_STORAGE, full.stderr[-3000:]
    assert ("No space left on device" in full.stderr
            and "the last complete checkpoint is kept" in full.stderr)
    assert "Traceback" not in full.stderr
    assert latest_step(run) == 2 and Checkpointer(run, 0, 1).damaged("step_00000002") == []
    assert not (run / "DONE.json").exists()

    small_fs.resize(disk, "64m")
    again = run_train(cfg, **ONE_THREAD)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step_00000002" in again.stderr
    assert read_record(run).step == 4


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, store):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", store, run, max_steps=4, checkpoint_every_steps=2,
                       validation={"every_steps": 0})
    assert run_train(cfg, **ONE_THREAD).returncode == 0
    optimiser = run / "checkpoints" / "step_00000004" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    # truncated after it was written (a bad disk, a copy)
    optimiser.write_bytes(optimiser.read_bytes()[:1000])
    again = run_train(cfg, "--max-steps", "6", **ONE_THREAD)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt does not match its checksum" in again.stderr
    assert ("resuming from step_00000002, the newest intact checkpoint before step_00000004"
            in again.stderr)
    assert "resumed from step_00000002 at step 2/6" in again.stderr
    assert read_record(run).step == 6
    checkpoints = Checkpointer(run, 0, 1)
    assert checkpoints.candidates()[:2] == ["step_00000006", "step_00000004"]
    assert checkpoints.damaged("step_00000004") == []  # saved again on the way


def test_conversion_on_a_full_disk_resumes_to_the_same_store(tmp_path, small_fs):
    source = tmp_path / "in.hdf5"
    write_random_showers(source, 96, "ds2", seed=3)
    args = ["--geometry", "ds2", "--chunk-rows", "8", "--shard-rows", "16", "--quiet"]
    assert run_module("data_tools.convert", str(source), "--out", str(tmp_path / "ref.zarr"),
                      *args).returncode == 0
    disk = small_fs.mount("disk", "512k")
    full = run_module("data_tools.convert", str(source), "--out", str(disk / "s.zarr"), *args)
    assert full.returncode == EXIT_STORAGE, full.stderr
    assert "No space left on device" in full.stderr and "the same command resumes" in full.stderr
    assert "Traceback" not in full.stderr
    assert zarr.open_group(str(disk / "s.zarr"), mode="r").attrs["complete"] is False
    small_fs.resize(disk, "16m")
    assert run_module("data_tools.convert", str(source), "--out", str(disk / "s.zarr"),
                      *args).returncode == 0
    assert tree_bytes(disk / "s.zarr") == tree_bytes(tmp_path / "ref.zarr")


def test_export_on_a_full_disk_publishes_nothing(tmp_path, small_fs):
    make_generated(tmp_path / "g.zarr", n=64)
    disk = small_fs.mount("disk", "64k")
    full = run_module("data_tools.export", str(tmp_path / "g.zarr"), "--out", str(disk / "g.hdf5"),
                      "--quiet")
    assert full.returncode == EXIT_STORAGE, full.stderr
    assert ("No space left on device" in full.stderr
            and "no export file was published" in full.stderr)
    assert list(disk.iterdir()) == []
    small_fs.resize(disk, "16m")
    assert run_module("data_tools.export", str(tmp_path / "g.zarr"), "--out",
                      str(disk / "g.hdf5")).returncode == 0
    with h5py.File(disk / "g.hdf5", "r") as f:
        assert f["showers"].shape == (64, 6480)
    assert json.loads((tmp_path / "g.zarr.manifest.json").read_text())["n"] == 64
