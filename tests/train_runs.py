"""Helpers of the tests that run training as a user does (``python -m pipeline.train`` in a
subprocess): a clean environment, a tiny config, process groups that are killed on time-out, and
readers of the results."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from pipeline.data.run_record import read_record
from pipeline.models.ema_weights import load_ema_weights
from pipeline.training.checkpoint import LATEST, step_of

from conftest import REPO

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                    "MASTER_PORT")
LAUNCH_PREFIXES = ("SLURM_", "PMI_", "PMIX_", "OMPI_", "SUBMITIT_", "MPI_LOCAL", "HYDRA_")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without any launcher's variables (tests may run inside a SLURM job)."""
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCH_VARIABLES and not k.startswith(LAUNCH_PREFIXES)}
    env.update(extra)
    return env


def write_config(path: Path, store: Path, run_dir: Path, sections: dict | None = None,
                 **train) -> Path:
    """A tiny training config for ``store``; ``train`` overrides keys of the train section,
    ``sections`` adds other sections (e.g. ``{"optim": {"grad_clip": 0.0}}``)."""
    cfg = {
        "run": {"dir": str(run_dir), "seed": 7},
        "data": {"geometry": "ds2", "inputs": ["unused.hdf5"], "store": str(store),
                 "global_batch_size": 4, "shuffle_chunks": 4, "num_workers": 1,
                 "prefetch_chunks": 4},
        "model": {"preset": "tiny"},
        "train": {"max_steps": 10, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every_steps": 2,
                  "checkpoint_every_minutes": 0,
                  "validation": {"every_steps": 5, "per_rank_batches": 2},
                  "log_every_steps": 1, "ema_decay": 0.99, **train},
        **(sections or {}),
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", "--config", str(config), *args]


def run_train(config: Path, *args: str, timeout: float = 180,
              **env: str) -> subprocess.CompletedProcess:
    return run_group(train_cmd(config, *args), timeout=timeout, env=clean_env(**env))


def run_group(cmd: list[str], timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on time-out kill the whole group (launchers leave workers
    behind)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@contextlib.contextmanager
def started(config: Path, stderr=subprocess.DEVNULL, **env: str):
    """A training process in the background, killed on exit if still running."""
    proc = subprocess.Popen(train_cmd(config), cwd=REPO, env=clean_env(**env),
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def metrics(run_dir: Path, kind: str = "train") -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == kind]


def final_weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trained weights of the last checkpoint, EMA export) of a finished run, loaded
    weights-only."""
    done = read_record(run_dir)
    assert done is not None
    model = torch.load(Path(done.checkpoint) / "mp_rank_00_model_states.pt",
                       weights_only=True)["module"]
    ema, _ = load_ema_weights(done.ema)
    return model, {f"{net}.{k}": v for net, sd in ema.items() for k, v in sd.items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"training exited ({proc.returncode}) before the expected point"
        assert time.time() < deadline, "timed out waiting for training"
        time.sleep(0.02)


def latest_step(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / LATEST
    return step_of(path.read_text().strip()) if path.is_file() else -1
