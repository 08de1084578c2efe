"""Shared test helpers: small CaloChallenge-format files and store comparison."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.calochallenge_hdf5 import shower_file_writer
from pipeline.geometry import load_geometry
from pipeline.preprocessing import Preprocessor
from pipeline.shower_stats import block_stats, stats_to_dict

REPO = Path(__file__).resolve().parent.parent


def write_random_showers(path: Path, n: int, geometry: str = "ds3", seed: int = 0, dtype: str = "float64",
                         zero_fraction: float = 0.88) -> tuple[np.ndarray, np.ndarray]:
    """A sparse CaloChallenge-format file (random, not physical: for format and I/O tests)."""
    g = load_geometry(geometry)
    rng = np.random.default_rng(seed)
    energies = 10 ** rng.uniform(3, 6, n)
    showers = rng.gamma(1.0, 3.5, (n, g.n_voxels))
    showers[rng.random(showers.shape) < zero_fraction] = 0
    with shower_file_writer(path, n, g.n_voxels, dtype=dtype) as f:
        f["incident_energies"][:, 0] = energies
        f["showers"][:] = showers
    return energies, showers


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, for bit-identity comparisons."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m module args`` in a subprocess of the test interpreter."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO, **kw)


@pytest.fixture
def small_ds3(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path / "small_ds3.hdf5"
    e, s = write_random_showers(path, 100, "ds3", seed=1)
    return path, e, s


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (small models are faster so and other processes keep a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_zero_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised parameters (output convs, gates) random values so outputs are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def random_batch(geometry: str, n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse showers (n, L, A, R) and energies (n,), with a few empty layers."""
    g = load_geometry(geometry)
    rng = np.random.default_rng(seed)
    energies = 10 ** rng.uniform(3, 6, n)
    showers = rng.gamma(1.0, 3.5, (n, *g.shape))
    showers[rng.random(showers.shape) < 0.85] = 0
    showers[0, -3:] = 0  # empty layers
    return energies, showers


def make_preprocessor(geometry: str, seed: int = 0) -> tuple[Preprocessor, torch.Tensor, torch.Tensor]:
    """A preprocessor standardised with the statistics of a random batch, and that batch."""
    e, s = random_batch(geometry, seed=seed)
    stats = stats_to_dict(block_stats(e, s.astype(np.float32), load_geometry(geometry)))
    return Preprocessor(stats, load_geometry(geometry)), torch.from_numpy(s), torch.from_numpy(e)


def find_mpirun() -> str | None:
    """mpirun beside the interpreter (pip's mpich) or on PATH."""
    local = Path(sys.executable).with_name("mpirun")
    return str(local) if local.exists() else shutil.which("mpirun")
