"""Shared test helpers: small CaloChallenge-format files and store comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_tools.calochallenge_hdf5 import shower_file_writer
from pipeline.geometry import load_geometry

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
