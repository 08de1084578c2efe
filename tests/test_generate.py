"""pipeline.generate: per-index energies and noise, batch-size and rank independence, resume after a
stop or a kill, the plan check, the manifest, and errors. The model is a tiny ds2 pair with random
weights (its zero-initialised output layers randomised), exported like a finished training run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from train_runs import clean_env, write_config

from pipeline.config import load_config, save_resolved
from pipeline.config.loader import ConfigError
from pipeline.data import run_layout
from pipeline.data.run_layout import sample_blocks_dir, sample_manifest
from pipeline.data.run_record import RunRecord
from pipeline.data.shower_store import ShowerStore, StoreError
from pipeline.diffusion import CosineSchedule, NoiseSource, shower_seed
from pipeline.generation.command import run
from pipeline.generation.energies import IncidentEnergies
from pipeline.generation.sampler import load_sampler
from pipeline.models import build_models
from pipeline.physics.geometry import load_geometry
from pipeline.training.ema import EMA, export_ema
from pipeline.training.losses import DiffusionLoss

from conftest import REPO, assert_same_generated_showers, randomize_zero_init

N = 150  # 3 blocks of 64 (the last one partial), shards of 32
THRESHOLD = load_geometry("ds2").threshold_mev


@pytest.fixture(scope="module")
def model_config(tmp_path_factory, store) -> Path:
    """A config whose teacher run directory holds random tiny ds2 weights, 2 DDIM steps."""
    d = tmp_path_factory.mktemp("generate")
    config = write_config(d / "cfg.yaml", store, d / "run")
    raw = yaml.safe_load(config.read_text())
    raw["sampling"] = {"steps": 2}
    raw["distill"] = {"final_steps": 2}
    raw["generate"] = {"n": N, "seed": 3, "model": "teacher", "out": str(d / "a.zarr"),
                       "block_size": 64, "per_rank_batch_size": 16,
                       "layout": {"chunk_rows": 16, "shard_rows": 32}}
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    torch.manual_seed(0)
    layer_net, unet = build_models(cfg.model, ShowerStore(store).geometry)
    pair = DiffusionLoss(randomize_zero_init(layer_net), randomize_zero_init(unet),
                         CosineSchedule())
    run_dir = Path(cfg.run.dir)
    (run_dir / "ema").mkdir(parents=True)
    export_ema(EMA(pair, 0.9), run_dir / "ema" / "ema.safetensors", {})
    save_resolved(cfg, run_dir)
    RunRecord.of_export(cfg, run_dir, run_dir / "ema" / "ema.safetensors", sample_steps=2,
                        config_source=str(config)).write(run_dir)
    return config


def gen_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.generate", "--config", str(config), *args]


def read_sample(path: Path) -> tuple[np.ndarray, np.ndarray]:
    s = ShowerStore(path)
    return s.showers[:], s.energies_array[:]


@pytest.fixture(scope="module")
def reference_sample(model_config) -> tuple[np.ndarray, np.ndarray]:
    """The sample of the config as given (batch 16, one rank)."""
    cfg = load_config(model_config)
    assert run(cfg, rank=0, world_size=1) == 0
    return read_sample(run_layout.sample_path(cfg))


def test_energies_and_noise_depend_only_on_the_index():
    e = IncidentEnergies(5, (1e3, 1e6), None)
    whole = e(0, 4000)
    np.testing.assert_array_equal(whole[1000:1010], e(1000, 1010))
    assert whole.min() >= 1e3 and whole.max() <= 1e6
    logs = np.log10(whole)  # log-uniform on [3, 6]: mean 4.5, sd 3 / sqrt(12)
    assert abs(logs.mean() - 4.5) < 0.05 and abs(logs.std() - 3 / 12**0.5) < 0.05
    assert not np.array_equal(whole[:10], IncidentEnergies(6, (1e3, 1e6), None)(0, 10))
    seeds = [shower_seed(5, i) for i in range(6)]
    together = NoiseSource(seeds)((3, 4), 0, "voxels")
    apart = torch.cat([NoiseSource(seeds[:2])((3, 4), 0, "voxels"),
                       NoiseSource(seeds[2:])((3, 4), 0, "voxels")])
    assert torch.equal(together, apart)


def test_sample_is_complete_with_a_manifest(model_config, reference_sample):
    cfg = load_config(model_config)
    path = run_layout.sample_path(cfg)
    showers, energies = reference_sample
    assert showers.shape == (N, 45, 16, 9) and energies.shape == (N,)
    np.testing.assert_array_equal(energies,
                                  IncidentEnergies(3, cfg.generate.energy_range, None)(0, N))
    assert (showers >= 0).all() and (showers.sum(axis=(1, 2, 3)) > 0).all()
    manifest = json.loads(sample_manifest(path).read_text())
    assert manifest["n"] == N and manifest["seed"] == 3 and manifest["n_blocks"] == 3
    assert (manifest["sample_steps"] == 2 and manifest["stage"] == 0
            and manifest["model"]["preset"] == "tiny")
    assert manifest["timing"]["rank_seconds"] > 0 and manifest["config"]["generate"]["n"] == N
    assert (sorted(p.name for p in sample_blocks_dir(path).iterdir())
            == [f"block_{b:07d}.json" for b in range(3)])
    assert sorted(p.name for p in path.iterdir()) == ["incident_energies", "showers",
                                                      "zarr.json"]  # only zarr's
    assert run(cfg, rank=0, world_size=1) == 0  # already complete: nothing to do


def test_serial_and_pipelined_writers_write_the_same_bytes(tmp_path, model_config,
                                                           reference_sample):
    """generate.writer_threads only moves the copies, compression and writes to other threads."""
    showers, energies = reference_sample
    for threads in (0, 3):
        out = tmp_path / f"w{threads}.zarr"
        cfg = load_config(model_config, [f"generate.out={out}",
                                         f"generate.writer_threads={threads}"])
        assert run(cfg, rank=0, world_size=1) == 0
        t_showers, t_energies = read_sample(out)
        np.testing.assert_array_equal(t_showers, showers)
        np.testing.assert_array_equal(t_energies, energies)
        markers = [json.loads(p.read_text())
                   for p in sorted(sample_blocks_dir(out).glob("block_*.json"))]
        assert ([m["block"] for m in markers] == [0, 1, 2]
                and {m["writer_threads"] for m in markers} == {threads})


def test_a_failing_shard_write_is_raised_and_leaves_its_block_unmarked(tmp_path, model_config,
                                                                       monkeypatch):
    """An error in a writer thread reaches the command (exit 74 path) and the block gets no
    marker."""
    from pipeline.data.sample_store import SampleStore

    real_write, calls = SampleStore.write, []

    def write(self, start, showers, energies):
        calls.append(start)
        if start == 96:  # the second shard of block 1
            raise OSError(28, "No space left on device", "showers/c/3")
        real_write(self, start, showers, energies)

    monkeypatch.setattr(SampleStore, "write", write)
    out = tmp_path / "full.zarr"
    cfg = load_config(model_config, [f"generate.out={out}", "generate.writer_threads=2"])
    with pytest.raises(OSError, match="No space"):
        run(cfg, rank=0, world_size=1)
    assert (sorted(p.name for p in sample_blocks_dir(out).glob("block_*.json"))
            == ["block_0000000.json"])


@pytest.mark.slow
def test_compiled_networks_give_the_same_sample(tmp_path, model_config, reference_sample):
    """generate.compile (torch.compile with static shapes, padded last batch; inductor's C++ backend
    on the CPU, about a minute to compile) changes showers only to float32 tolerance; the speed-only
    switches change nothing."""
    showers, energies = reference_sample
    out = tmp_path / "compiled.zarr"
    cfg = load_config(model_config, [f"generate.out={out}", "generate.compile=true",
                                     "device.channels_last=true", "device.cudnn_benchmark=true"])
    assert run(cfg, rank=0, world_size=1) == 0
    c_showers, c_energies = read_sample(out)
    np.testing.assert_array_equal(c_energies, energies)
    assert_same_generated_showers(c_showers, showers, THRESHOLD)


@pytest.mark.slow
def test_batch_size_and_ranks_do_not_change_the_sample(tmp_path, model_config, reference_sample):
    showers, energies = reference_sample
    cfg = load_config(model_config, [f"generate.out={tmp_path / 'b.zarr'}",
                                     "generate.per_rank_batch_size=7"])
    assert run(cfg, rank=0, world_size=1) == 0
    b_showers, b_energies = read_sample(tmp_path / "b.zarr")
    np.testing.assert_array_equal(b_energies, energies)
    assert_same_generated_showers(b_showers, showers, THRESHOLD)

    out = tmp_path / "c.zarr"
    procs = [subprocess.Popen(gen_cmd(model_config, "--out", str(out), "--rank", str(r),
                                      "--world-size", "2"),
                              cwd=REPO, env=clean_env(OMP_NUM_THREADS="1"), stderr=subprocess.PIPE,
                              text=True)
             for r in (0, 1)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert any("complete" in e for e in errors)
    c_showers, c_energies = read_sample(out)
    np.testing.assert_array_equal(c_energies, energies)
    assert_same_generated_showers(c_showers, showers, THRESHOLD)
    ranks = {json.loads(p.read_text())["rank"] for p in sample_blocks_dir(out).glob("block_*.json")}
    assert ranks == {0, 1}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGUSR1", "SIGKILL"])
def test_stopped_or_killed_run_resumes_to_the_same_sample(tmp_path, model_config, reference_sample,
                                                          how):
    out = tmp_path / "d.zarr"
    cmd = gen_cmd(model_config, "--out", str(out), "--set", "generate.per_rank_batch_size=16")
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(OMP_NUM_THREADS="1"),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (sample_blocks_dir(out) / "block_0000000.json").exists():
        assert (proc.poll() is None
                and time.monotonic() < deadline), proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    os.kill(proc.pid, getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (75 if how == "SIGUSR1" else -9), err
    assert not sample_manifest(out).exists()
    first_block = ShowerStore(out, require_complete=False).showers[:64]
    if how == "SIGUSR1":
        assert "re-run the same command" in err
    again = subprocess.run(cmd, cwd=REPO, env=clean_env(OMP_NUM_THREADS="1"), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    showers, energies = read_sample(out)
    # the finished block was kept, not redone
    np.testing.assert_array_equal(showers[:64], first_block)
    np.testing.assert_array_equal(energies, reference_sample[1])
    assert_same_generated_showers(showers, reference_sample[0], THRESHOLD)  # other thread count
    assert json.loads(sample_manifest(out).read_text())["n"] == N
    assert not list(out.rglob("*.partial"))


@pytest.mark.slow
def test_a_full_disk_keeps_finished_blocks_and_a_rerun_completes(model_config, reference_sample,
                                                                 small_fs):
    """A real full disk (a 600 KB tmpfs holds the first block of ~460 KB, not the second): a clear
    error (exit 74), the first block and its marker intact, no manifest; with room, the same command
    finishes."""
    disk = small_fs.mount("disk", "600k")
    out = disk / "d.zarr"
    cmd = gen_cmd(model_config, "--out", str(out), "--set", "generate.per_rank_batch_size=16")
    full = subprocess.run(cmd, cwd=REPO, env=clean_env(OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 74, full.stderr[-3000:]
    assert "No space left on device" in full.stderr and "finished blocks are kept" in full.stderr
    assert "Traceback" not in full.stderr
    assert ([p.name for p in sorted(sample_blocks_dir(out).glob("block_*"))]
            == ["block_0000000.json"])
    first_block = ShowerStore(out, require_complete=False).showers[:64]
    assert not sample_manifest(out).exists()
    small_fs.resize(disk, "16m")
    again = subprocess.run(cmd, cwd=REPO, env=clean_env(OMP_NUM_THREADS="1"), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    showers, energies = read_sample(out)
    np.testing.assert_array_equal(showers[:64], first_block)
    np.testing.assert_array_equal(energies, reference_sample[1])
    assert_same_generated_showers(showers, reference_sample[0], THRESHOLD)
    assert not list(out.rglob("*.partial"))


@pytest.mark.slow
def test_a_stop_signal_during_start_up_is_not_fatal(tmp_path, model_config):
    """SIGUSR1 while the command still imports torch and loads the model: the handler is installed
    on its first line, so the stage stops cleanly (exit 75, requeue marker for slurm/env.sh) instead
    of dying of the signal."""
    marker = tmp_path / "requeue"
    proc = subprocess.Popen(gen_cmd(model_config, "--out", str(tmp_path / "e.zarr")),
                            cwd=REPO, text=True,
                            env=clean_env(OMP_NUM_THREADS="1", CALO_REQUEUE_MARKER=str(marker)),
                            stderr=subprocess.PIPE)
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "stopped by SIGUSR1" in err and "SIGUSR1" in marker.read_text()
    assert not sample_manifest(tmp_path / "e.zarr").exists()
    assert (json.loads((sample_blocks_dir(tmp_path / "e.zarr") / "REQUEUE").read_text())["reason"]
            == "signal SIGUSR1")


def test_a_different_plan_is_refused(tmp_path, model_config, reference_sample):
    cfg = load_config(model_config, ["generate.seed=4"])
    with pytest.raises(StoreError, match="another plan .seed: 3, now 4"):
        run(cfg, rank=0, world_size=1)


def test_sample_steps_override_the_models_own(tmp_path, model_config, reference_sample):
    """generate.sample_steps: the same model with other DDIM steps (the undistilled teacher at a
    stage's steps)."""
    with pytest.raises(StoreError, match="another plan .sample_steps: 2, now 1"):
        run(load_config(model_config, ["generate.sample_steps=1"]), rank=0, world_size=1)
    out = tmp_path / "one_step.zarr"
    assert run(load_config(model_config, [f"generate.out={out}", "generate.sample_steps=1"]),
               rank=0, world_size=1) == 0
    manifest = json.loads(sample_manifest(out).read_text())
    assert manifest["sample_steps"] == 1 and manifest["model"]["model_sample_steps"] == 2
    showers, energies = read_sample(out)
    np.testing.assert_array_equal(energies, reference_sample[1])
    assert not np.allclose(showers, reference_sample[0])
    with pytest.raises(ConfigError, match="generate.sample_steps: must be >= 1"):
        load_config(model_config, ["generate.sample_steps=0"])


def test_energies_from_a_reference_sample(tmp_path, model_config, store):
    cfg = load_config(model_config, [f"generate.out={tmp_path / 'e.zarr'}", "generate.n=0",
                                     f"generate.energies_from={store}"])
    assert run(cfg, rank=0, world_size=1) == 0
    _, energies = read_sample(tmp_path / "e.zarr")
    np.testing.assert_array_equal(energies, ShowerStore(store).energies)
    too_many = load_config(model_config, [f"generate.out={tmp_path / 'f.zarr'}",
                                          "generate.n=100000", f"generate.energies_from={store}"])
    with pytest.raises(ConfigError, match="has only 320"):
        run(too_many, rank=0, world_size=1)


def test_model_carries_its_preprocessing_statistics(tmp_path, model_config, store):
    """An EMA export with the statistics in its metadata (as training writes it) needs no training
    store."""
    cfg = load_config(model_config)
    run_dir = tmp_path / "moved"
    layer_net, unet = build_models(cfg.model, ShowerStore(store).geometry)
    pair = DiffusionLoss(randomize_zero_init(layer_net), randomize_zero_init(unet),
                         CosineSchedule())
    (run_dir / "ema").mkdir(parents=True)
    export_ema(EMA(pair, 0.9), run_dir / "ema" / "ema.safetensors",
               {"preprocessing_stats": ShowerStore(store).stats, "geometry": "ds2"})
    save_resolved(cfg, run_dir)
    moved = load_config(model_config, [f"data.store={tmp_path / 'gone.zarr'}"])
    RunRecord.of_export(moved, run_dir, run_dir / "ema" / "ema.safetensors",
                        sample_steps=1).write(run_dir)
    sampler = load_sampler(run_dir, torch.device("cpu"))
    assert sampler.steps == 1 and sampler.geometry.name == "ds2"
    (run_dir / "ema" / "ema.safetensors").unlink()
    export_ema(EMA(pair, 0.9), run_dir / "ema" / "ema.safetensors", {})
    with pytest.raises(ConfigError, match="gone.zarr, which cannot be read"):
        load_sampler(run_dir, torch.device("cpu"))


def test_errors_name_the_problem(tmp_path, model_config):
    with pytest.raises(ConfigError, match="no DONE.json"):
        run(load_config(model_config, [f"generate.model={tmp_path}"]), rank=0, world_size=1)
    with pytest.raises(ConfigError, match="needs generate.energies_from"):
        load_config(model_config, ["generate.n=0"])
    with pytest.raises(ConfigError, match="multiple of generate.layout.shard_rows"):
        load_config(model_config, ["generate.block_size=40"])
    with pytest.raises(ConfigError, match=r"--rank 2 is not in \[0, --world-size 2\)"):
        run(load_config(model_config), rank=2, world_size=2)
    proc = subprocess.run(gen_cmd(model_config, "--model", "stage_x"), cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode == 2
            and "generate.model: expected final, teacher, stage_K" in proc.stderr)
