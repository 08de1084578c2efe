"""pipeline.distill: stage configs and errors, and a real two-stage chain on a tiny ds2 teacher.

The measure of success: on a fixed batch (noise, incident energies and, for the voxel network, the
true layer energies), the mean squared difference in the networks' (preprocessed) space between the
student's N/2-step DDIM samples and the teacher's N-step samples, over all generated values of a
shower (L layer energies and L x A x R voxels), before distillation (the student starts as the
teacher's EMA weights) and after one stage: it must at least halve, and each network's own gap must
shrink.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from train_runs import clean_env, run_group, train_cmd, write_config

from pipeline.config import load_config
from pipeline.config.loader import ConfigError
from pipeline.data import run_layout
from pipeline.data.shower_store import ShowerStore
from pipeline.diffusion import sample
from pipeline.generation.sampler import Sampler, load_sampler
from pipeline.training.distill_command import stage_config, teacher_of

TEACHER_STEPS = 4


def distill_cmd(config: Path, stage: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.distill", "--config", str(config),
            "--stage", str(stage), *args]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, store):
    """A 20-step teacher (4 DDIM steps) and its distillation config (4 -> 2 -> 1 steps)."""
    import yaml

    d = tmp_path_factory.mktemp("distill")
    config = write_config(d / "cfg.yaml", store, d / "run", max_steps=20, lr=2e-3,
                          checkpoint_every_steps=0, validation={"every_steps": 0},
                          log_every_steps=5, ema_decay=0.9)
    raw = yaml.safe_load(config.read_text())
    raw["data"]["global_batch_size"] = 8
    raw["sampling"] = {"steps": TEACHER_STEPS}
    raw["distill"] = {"final_steps": 1, "max_steps": 80, "lr": 1e-3, "warmup_steps": 2,
                      "ema_decay": 0.5}
    config.write_text(yaml.safe_dump(raw))
    proc = run_group(train_cmd(config), timeout=600, env=clean_env(OMP_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config


def samples_gap(student: Sampler, teacher: Sampler, showers: torch.Tensor,
                energies: torch.Tensor) -> dict[str, float]:
    """MSE between the student's and the teacher's samples from the same noise (see the module
    doc)."""
    p = teacher.preprocessor(showers, energies)
    g = torch.Generator().manual_seed(0)
    z_layers, z_voxels = (torch.randn(p.layers.shape, generator=g),
                          torch.randn(p.voxels.shape, generator=g))

    @torch.no_grad()
    def draw(s: Sampler) -> tuple[torch.Tensor, torch.Tensor]:
        layers = sample(lambda z, t: s.layer.model(z, t, p.cond), z_layers, s.schedule,
                        s.layer.steps)
        voxels = sample(lambda z, t: s.voxel.model(z, t, p.cond, p.layers), z_voxels, s.schedule,
                        s.voxel.steps)
        return layers, voxels

    (sl, sv), (tl, tv) = draw(student), draw(teacher)
    layers, voxels = ((sl - tl) ** 2).sum().item(), ((sv - tv) ** 2).sum().item()
    n_values = sl.numel() + sv.numel()
    return {"all": (layers + voxels) / n_values, "layers": layers / sl.numel(),
            "voxels": voxels / sv.numel()}


def test_stage_configs_and_errors(tmp_path, store):
    import yaml

    config = write_config(tmp_path / "cfg.yaml", store, tmp_path / "run")
    raw = yaml.safe_load(config.read_text())
    raw.update(sampling={"steps": 16}, distill={"final_steps": 4, "max_steps": 7, "lr": 1e-4})
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    assert run_layout.n_stages(cfg) == 2
    s2 = stage_config(cfg, 2)
    assert s2.sampling.steps == 4 and s2.train.max_steps == 7 and s2.train.lr == 1e-4
    assert (Path(s2.run.dir) == tmp_path / "run" / "distill" / "stage_2"
            and s2.run.seed != cfg.run.seed)
    with pytest.raises(ConfigError, match="stages 0..2"):
        stage_config(cfg, 3)
    with pytest.raises(ConfigError, match="stages start at 1"):
        stage_config(cfg, 0)
    with pytest.raises(ConfigError, match=r"teacher \(stage 0\) has not finished.*pipeline.train"):
        teacher_of(cfg, 1)
    with pytest.raises(ConfigError, match="distill.final_steps: 3 must be sampling.steps"):
        load_config(config, ["distill.final_steps=3"])
    proc = run_group(distill_cmd(config, 2), timeout=120, env=clean_env())
    assert (proc.returncode == 2 and "stage 1) has not finished" in proc.stderr
            and "--stage 1" in proc.stderr)


@pytest.mark.slow
def test_two_stages_bring_the_student_to_the_teacher(chain):
    cfg = load_config(chain)
    env = clean_env(OMP_NUM_THREADS="2")
    monitor = ("--set", "train.monitor.every_steps=80",
               "--set", "train.monitor.showers=32")  # steps 0, 80
    proc = run_group(distill_cmd(chain, 1, *monitor), timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads((run_layout.distill_dir(cfg, 1) / "DONE.json").read_text())
    assert (done["stage"] == 1 and done["sample_steps"] == 2
            and done["teacher_steps"] == TEACHER_STEPS)
    assert done["step"] == 80 and done["teacher"] == str(Path(cfg.run.dir).resolve())

    teacher = load_sampler(run_layout.distill_dir(cfg, 0), torch.device("cpu"))
    student = load_sampler(run_layout.distill_dir(cfg, 1), torch.device("cpu"))
    # the student before training: the teacher's weights with half the steps
    initial = load_sampler(run_layout.distill_dir(cfg, 0),
                           torch.device("cpu")).with_steps(student.steps)
    data = ShowerStore(cfg.data.store)
    showers, energies = torch.from_numpy(data.showers[:32]), torch.from_numpy(data.energies[:32])
    before = samples_gap(initial, teacher, showers, energies)
    after = samples_gap(student, teacher, showers, energies)
    print(f"gap to the {TEACHER_STEPS}-step teacher: before {before}, after {after}")
    assert after["all"] < 0.5 * before["all"], (before, after)
    for net in ("layers", "voxels"):
        assert after[net] < 0.8 * before[net], (net, before, after)
    # the fidelity monitor saw it too: the student's showers moved towards the teacher's
    # for the same noise
    with open(run_layout.distill_dir(cfg, 1) / "logs" / "monitor.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 80]
    gaps = [float(r["student_teacher_rel_l1"]) for r in rows]
    print(f"monitor: student-teacher relative L1 {gaps}")
    assert gaps[1] < 0.9 * gaps[0], gaps

    # stage 2 reads stage 1's DONE.json; re-running a finished stage is a no-op
    proc = run_group(distill_cmd(chain, 2, "--set", "distill.max_steps=3"), timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done2 = json.loads((run_layout.distill_dir(cfg, 2) / "DONE.json").read_text())
    assert done2["sample_steps"] == 1 and done2["teacher_ema_sha256"] == done["ema_sha256"]
    again = run_group(distill_cmd(chain, 1), timeout=300, env=env)
    assert again.returncode == 0 and "already complete" in again.stderr
