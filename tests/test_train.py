"""pipeline.train: config checks, schedule, EMA, checkpoints, and real runs (one process and
torchrun -n 2).

Runs use the tiny preset on a small stand-in ds2 store (45 x 16 x 9 voxels) so that a training step
takes a fraction of a second on CPU. The helpers that run it are in tests/train_runs.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_runs import (
    ONE_THREAD,
    assert_same_tensors,
    clean_env,
    final_weights,
    latest_step,
    metrics,
    run_group,
    run_train,
    started,
    wait_for,
    write_config,
)

from pipeline.config import ModelConfig, load_config
from pipeline.config.loader import ConfigError
from pipeline.data.run_record import read_record
from pipeline.data.shower_store import StoreError
from pipeline.data.stream import StreamError
from pipeline.diffusion import CosineSchedule
from pipeline.models import build_models
from pipeline.models.ema_weights import current_key, load_ema_weights, save_ema_weights
from pipeline.physics.geometry import load_geometry
from pipeline.runtime.exit_codes import EXIT_CONFIG, EXIT_NONFINITE, EXIT_REQUEUE
from pipeline.runtime.tensor_files import load_tensors, save_tensors
from pipeline.runtime.time_limit import parse_duration
from pipeline.training.checkpoint import LATEST, Checkpointer, CheckpointError, tag_for
from pipeline.training.ema import EMA, export_ema
from pipeline.training.engine import lr_factor
from pipeline.training.losses import DiffusionLoss
from pipeline.training.metrics_log import comparable_rows
from pipeline.training.train_command import preflight

from conftest import REPO


# ------------------------------------------------------------------ fast tests
def test_train_config_defaults_and_errors(tmp_path):
    cfg = load_config(REPO / "configs" / "ds3.yaml")
    assert cfg.train.zero_stage in (1, 2) and cfg.train.max_steps > cfg.train.warmup_steps
    load_config(REPO / "configs" / "smoke.yaml")
    load_config(REPO / "configs" / "ds2.yaml")
    for override, key in [("train.zero_stage=3", "train.zero_stage"),
                          ("device.precision=fp16", "device.precision"),
                          ("train.lr=0", "train.lr"), ("optim.betas=[0.9]", "optim.betas"),
                          ("train.grad_accum=0", "train.grad_accum"),
                          ("train.ema_decay=1.0", "train.ema_decay"),
                          ("train.bogus=1", "train.bogus")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(REPO / "configs" / "smoke.yaml", [override])


def test_preflight_catches_mistakes_before_any_process_group(tmp_path, store):
    cfg_path = write_config(tmp_path / "c.yaml", store, tmp_path / "run")
    preflight(load_config(cfg_path), 2)
    with pytest.raises(ConfigError,
                       match=r"data\.global_batch_size: 4 does not divide evenly over 3 ranks"):
        preflight(load_config(cfg_path), 3)
    with pytest.raises(StoreError, match="not a zarr store"):
        preflight(load_config(cfg_path, [f"data.store={tmp_path / 'missing.zarr'}"]), 1)
    with pytest.raises(ConfigError, match=r"data\.geometry: the config says ds3 but .* holds ds2"):
        preflight(load_config(cfg_path, ["data.geometry=ds3"]), 1)
    # 4 validation chunks cannot feed 8 ranks
    with pytest.raises(StreamError, match="needs at least"):
        preflight(load_config(cfg_path, ["data.global_batch_size=8"]), 8)
    with pytest.raises(CheckpointError, match="init_from"):
        preflight(load_config(cfg_path, [f"train.init_from={tmp_path}"]), 1)
    # the command line reports it with exit code 2, before DeepSpeed starts anything
    result = run_train(cfg_path, "--set", f"data.store={tmp_path / 'missing.zarr'}", timeout=60)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "train: error:" in result.stderr and "not a zarr store" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    bad = run_train(cfg_path, "--time-limit", "soon", timeout=60)
    assert bad.returncode == EXIT_CONFIG and "--time-limit" in bad.stderr


def test_parse_duration():
    assert (parse_duration("90") == 90 and parse_duration("90s") == 90
            and parse_duration("30m") == 1800)
    assert parse_duration("1.5h") == 5400 and parse_duration("3:55:00") == 14100
    assert parse_duration("05:30") == 330 and parse_duration("1-00:00:00") == 86400
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    t = load_config(None, ["data.inputs=[x]", "train.max_steps=100", "train.warmup_steps=10"]).train
    factors = [lr_factor(s, t, 0.1) for s in range(120)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[55] == pytest.approx(0.55) and factors[100] == pytest.approx(0.1) == factors[119]


def test_ema_update_and_tensor_files(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update(model)  # first update uses min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.module.weight, before + 0.9 * (model.weight - before))
    assert ema.updates == 1 and not ema.module.weight.requires_grad
    path = save_tensors(tmp_path / "a", {"w": torch.arange(4.0)}, {"k": "v"})
    assert path.suffix == ".safetensors"
    monkeypatch.setattr("pipeline.runtime.tensor_files._safetensors", None)
    fallback = save_tensors(tmp_path / "b", {"w": torch.arange(4.0)}, {"k": "v"})
    assert fallback.suffix == ".pt"
    tensors, meta = load_tensors(fallback)
    assert torch.equal(tensors["w"], torch.arange(4.0)) and meta == {"k": "v"}
    assert torch.load(fallback, weights_only=True)["metadata"] == {"k": "v"}


def test_ema_export_roundtrip(tmp_path):
    pair = torch.nn.Module()
    pair.layer_net, pair.voxel_net = torch.nn.Linear(2, 2), torch.nn.Linear(3, 1)
    ema = EMA(pair, 0.99)
    path = export_ema(ema, tmp_path / "ema_step_00000001.safetensors", {"step": 1})
    parts, meta = load_ema_weights(path)
    assert meta == {"step": 1} and set(parts) == {"layer_net", "voxel_net"}
    assert torch.equal(parts["voxel_net"]["weight"], pair.voxel_net.weight)


def test_weights_saved_under_the_old_voxel_name_still_load(tmp_path):
    """Files written before ``voxel_unet`` became ``voxel_net``: EMA exports, checkpoints' state
    dicts."""
    def loss() -> DiffusionLoss:
        torch.manual_seed(0)
        return DiffusionLoss(*build_models(ModelConfig(preset="tiny"), load_geometry("ds2")),
                             CosineSchedule())

    old = {k.replace("voxel_net.", "voxel_unet.", 1): v + 1 for k, v in loss().state_dict().items()}
    assert any(k.startswith("voxel_unet.") for k in old)
    fresh = loss()
    fresh.load_state_dict(old)  # strict: every old key found its new name
    assert all(torch.equal(fresh.state_dict()[current_key(k)], v) for k, v in old.items())
    path = save_ema_weights(tmp_path / "old.safetensors", old, 1, {})
    parts, _ = load_ema_weights(path)
    assert set(parts) == {"layer_net", "voxel_net"}
    fresh.voxel_net.load_state_dict(parts["voxel_net"])


class _Payload:
    """Stands for an arbitrary object in a malicious or foreign checkpoint."""


def test_deepspeed_checkpoint_loading_is_weights_only(tmp_path):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from pipeline.training.engine import make_loading_safe

    engine = type("FakeEngine", (), {})()
    engine.checkpoint_engine = TorchCheckpointEngine()
    make_loading_safe(engine)
    ok, bad = tmp_path / "ok.pt", tmp_path / "bad.pt"
    torch.save({"w": torch.ones(2), "loss_scaler": LossScaler(1.0), "stage": ZeroStageEnum(2)}, ok)
    torch.save({"w": torch.ones(2), "x": _Payload()}, bad)
    assert torch.equal(engine.checkpoint_engine.load(str(ok))["w"], torch.ones(2))
    with pytest.raises(Exception, match="Unsupported global"):
        engine.checkpoint_engine.load(str(bad))


def test_latest_only_names_complete_checkpoints(tmp_path):
    ck = Checkpointer(tmp_path, rank=0, world_size=1, keep=2)
    assert ck.latest_tag() is None
    for step in (2, 4, 6):
        (ck.dir / tag_for(step)).mkdir(parents=True)
        (ck.dir / tag_for(step) / "train_state.json").write_text(
            json.dumps({"step": step, "world_size": 1}))
    (ck.dir / tag_for(8)).mkdir()  # a save killed half-way: no train_state.json, `latest` not moved
    (ck.dir / LATEST).write_text(tag_for(6))
    assert ck.latest_tag() == tag_for(6)
    ck._prune(keep_tag=tag_for(6))
    assert sorted(p.name for p in ck.dir.iterdir()) == [LATEST, tag_for(4), tag_for(6)]
    (ck.dir / LATEST).write_text(tag_for(8))
    with pytest.raises(CheckpointError, match="train_state.json is missing"):
        ck.latest_tag()


# ------------------------------------------------------------------ real runs
@pytest.mark.slow
def test_interrupted_runs_resume_bit_identically(tmp_path, store):
    """Uninterrupted run vs. one stopped by --time-limit, SIGKILLed, stopped by SIGUSR1 and resumed
    after each: identical weights, EMA and logs (timing columns aside)."""
    # train rows every 3 steps, checkpoints every 2: the interval of a row straddles a resume
    ref_cfg = write_config(tmp_path / "ref.yaml", store, tmp_path / "ref", log_every_steps=3)
    with open(tmp_path / "ref.log", "w") as log, started(ref_cfg, stderr=log, **ONE_THREAD) as ref:
        run = tmp_path / "run"  # the reference runs beside the interrupted runs, one thread each
        cfg = write_config(tmp_path / "run.yaml", store, run, log_every_steps=3)
        _interrupt_and_resume(cfg, run)
        ref.wait(timeout=180)
    assert ref.returncode == 0, (tmp_path / "ref.log").read_text()[-4000:]
    done = read_record(tmp_path / "ref")
    assert done.step == 10 and done.world_size == 1 and done.launcher == "single"
    assert Path(done.config).is_file() and Path(done.ema).is_file()
    assert done.final_losses["val_ema_loss"] > 0
    assert read_record(run).weights_sha256 == done.weights_sha256
    assert read_record(run).ema_sha256 == done.ema_sha256
    for a, b in zip(final_weights(tmp_path / "ref"), final_weights(run)):
        assert_same_tensors(a, b)
    assert (comparable_rows(run / "logs" / "metrics.csv")
            == comparable_rows(tmp_path / "ref" / "logs" / "metrics.csv"))
    assert [r["step"] for r in metrics(run, "val")] == ["0", "5", "10"]
    assert (sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
            == [tag_for(8), tag_for(10)])
    again = run_train(cfg)  # complete: nothing to do
    assert again.returncode == 0 and "already complete" in again.stderr


@pytest.mark.slow
def test_speed_switches_do_not_change_the_loss_curve(tmp_path, store):
    """device.channels_last (and the GPU-only optim.fused / device.cudnn_benchmark, no-ops here)
    keep the losses and weights of the default run to float32 tolerance."""
    runs = {}
    fast = {"device": {"channels_last": True, "cudnn_benchmark": False}, "optim": {"fused": False}}
    for name, extra in (("plain", {}), ("fast", fast)):
        cfg = write_config(tmp_path / f"{name}.yaml", store, tmp_path / name, extra, max_steps=4,
                           validation={"every_steps": 0})
        proc = run_train(cfg, **ONE_THREAD)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = tmp_path / name
    plain, fast = (np.array([float(r["loss"]) for r in metrics(runs[n])])
                   for n in ("plain", "fast"))
    assert len(plain) == 4 and np.allclose(fast, plain, rtol=1e-4, atol=0)
    for a, b in zip(final_weights(runs["plain"]), final_weights(runs["fast"])):
        for key in a:
            torch.testing.assert_close(b[key].contiguous(), a[key], rtol=1e-3, atol=1e-5, msg=key)


def _interrupt_and_resume(cfg: Path, run: Path) -> None:
    """SIGKILL before the first checkpoint (after the step-0 validation row), a fresh --time-limit
    stop, resume + SIGKILL after a checkpoint, resume + SIGUSR1, resume to the end."""
    log_file = run / "logs" / "metrics.csv"
    with started(cfg, **ONE_THREAD) as proc:
        wait_for(lambda: log_file.is_file() and ",val," in log_file.read_text(), proc)
        proc.kill()
        proc.wait()
    # should the kill have come after a checkpoint: logs written, no checkpoint, as wanted
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    (run / "DONE.json").unlink(missing_ok=True)

    # the first step already runs into the limit
    limited = run_train(cfg, "--time-limit", "1s", **ONE_THREAD)
    assert limited.returncode == EXIT_REQUEUE, limited.stderr
    marker = json.loads((run / "REQUEUE").read_text())
    assert marker["reason"] == "time limit" and latest_step(run) == marker["step"] == 1

    with started(cfg, **ONE_THREAD) as proc:
        wait_for(lambda: latest_step(run) >= 2, proc)
        proc.kill()
        proc.wait()
    killed_at = latest_step(run)
    assert killed_at < 10 and not (run / "DONE.json").exists()

    log = run.parent / "signalled.log"
    with open(log, "w") as f, started(cfg, stderr=f, **ONE_THREAD) as proc:
        wait_for(lambda: latest_step(run) > killed_at, proc)
        proc.send_signal(signal.SIGUSR1)
        proc.wait(timeout=120)
    err = log.read_text()
    assert proc.returncode == EXIT_REQUEUE, err
    marker = json.loads((run / "REQUEUE").read_text())
    assert marker["reason"] == "signal SIGUSR1" and latest_step(run) == marker["step"] < 10
    assert "re-run the same command" in err

    final = run_train(cfg, **ONE_THREAD)
    assert final.returncode == 0, final.stderr
    assert f"resumed from {tag_for(marker['step'])}" in final.stderr
    assert not (run / "REQUEUE").exists()


@pytest.mark.slow
def test_torchrun_two_ranks_zero2_agree_and_learn(tmp_path, store):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", store, run, max_steps=16, lr=3e-3, zero_stage=2,
                       checkpoint_every_steps=8, validation={"every_steps": 8})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pipeline.train", "--config", str(cfg)]
    result = run_group(cmd, timeout=240, env=clean_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    done = read_record(run)
    assert done.world_size == 2 and done.launcher == "torchrun" and done.ranks_agree
    files = sorted(p.name for p in Path(done.checkpoint).iterdir())
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in files and "rank_1.safetensors" in files
    assert len(metrics(run)) == 16
    val = metrics(run, "val")  # steps 0, 8, 16 on fixed validation showers, times and noise
    assert [int(r["step"]) for r in val] == [0, 8, 16]
    assert (float(val[-1]["loss"]) < float(val[0]["loss"])
            and float(val[-1]["ema_loss"]) < float(val[0]["ema_loss"]))
    assert (run / "logs" / "tensorboard").is_dir()


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, store):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", store, run, {"optim": {"grad_clip": 0.0}}, lr=1e30,
                       warmup_steps=0, checkpoint_every_steps=1, validation={"every_steps": 0})
    result = run_train(cfg)
    assert result.returncode == EXIT_NONFINITE, result.stderr
    assert "non-finite loss at step" in result.stderr and "last good checkpoint" in result.stderr
    good = latest_step(run)
    assert good >= 1 and not (run / "DONE.json").exists()
    state = json.loads((run / "checkpoints" / tag_for(good) / "train_state.json").read_text())
    assert all(v == v for v in state["losses"].values())  # no NaN saved
