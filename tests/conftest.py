"""Shared test helpers: small CaloChallenge-format files, stores and samples, network inputs, comparisons.

The helpers of tests that run training in a subprocess are in tests/train_runs.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.config import StoreLayout
from pipeline.data.calochallenge_hdf5 import shower_file_writer
from pipeline.data.run_layout import sample_blocks_dir, sample_manifest
from pipeline.data.shower_store import FORMAT_NAME, FORMAT_VERSION, ShowerStore, create_arrays
from pipeline.physics.geometry import load_geometry
from pipeline.physics.preprocessing import Preprocessor
from pipeline.physics.shower_stats import block_stats, stats_to_dict

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


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A training store (one per test module): 320 stand-in ds2 showers in chunks of 16, 16 training and 4
    validation chunks."""
    from data_tools.convert import convert
    from data_tools.simulate import simulate_file
    from pipeline.config import StoreLayout

    d = tmp_path_factory.mktemp("train_store")
    simulate_file(d / "standin.hdf5", "ds2", 320, seed=1, workers=1)
    return convert([d / "standin.hdf5"], d / "store.zarr", "ds2", layout=StoreLayout(16, 64),
                   validation_fraction=0.2, progress=False)


@pytest.fixture
def small_fs(tmp_path):
    """Size-limited tmpfs filesystems under ``tmp_path``: ``mount(name, size)`` -> path, ``resize(path, size)``.
    A real full disk (ENOSPC) where the machine allows mounting (root); the test is skipped otherwise."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
        if out.returncode:
            pytest.skip(f"cannot mount a size-limited tmpfs here ({out.stderr.strip()}): needs root")
        mounted.append(path)
        return path

    def resize(path: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    yield SimpleNamespace(mount=mount, resize=resize)
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


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


#: Float32 tolerances for the same generated showers computed with other batch sizes, rank or thread counts or
#: CPU kernels. Measured by ``benchmarks/reproducibility.py`` (docs/benchmarks.md, "Reproducibility", 2026-12-02):
#: up to 6.4e-3 relative on voxels above the threshold and 1.2e-6 on layer energies, over batch splits, 1-2
#: threads, oneDNN ISA caps AVX2/AVX512/SSE4.1 and ATen CPU capabilities default/avx2 (random tiny weights, which
#: amplify rounding more than trained ones). The tolerances leave a margin of about 3x and 40x; a shower
#: that got another shower's noise or energy differs by order one.
FLOAT32_VOXEL_RTOL = 2e-2
FLOAT32_LAYER_RTOL = 5e-5


def assert_same_generated_showers(actual, expected, threshold_mev: float) -> None:
    """Generated showers ``(N, L, A, R)`` (arrays or tensors) agree to float32 kernel tolerance.

    Compared: every voxel above the threshold in either sample (relative; a voxel within the tolerance of
    the threshold may be cut in one sample and kept in the other) and every layer energy (relative, plus
    two threshold energies for such a cut). Voxels far below the threshold are not compared one by one:
    there the inverse logit cancels and float32 keeps no relative precision, though they still enter the
    layer energies. Prints the largest differences seen (``pytest -s``).
    """
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    compared = np.maximum(a, b) >= threshold_mev * (1 + FLOAT32_VOXEL_RTOL)
    rel = np.abs(a - b)[compared] / np.maximum(a, b)[compared]
    la, lb = a.sum(axis=(2, 3)), b.sum(axis=(2, 3))
    layer_rel = np.abs(la - lb) / np.maximum(lb, 2 * threshold_mev)
    print(f"float32 spread: voxels {rel.max(initial=0):.1e} (of {compared.sum()}), layers {layer_rel.max():.1e}")
    np.testing.assert_allclose(a[compared], b[compared], rtol=FLOAT32_VOXEL_RTOL, atol=0,
                               err_msg="voxels above the threshold")
    np.testing.assert_allclose(la, lb, rtol=FLOAT32_LAYER_RTOL, atol=2 * threshold_mev, err_msg="layer energies")


def find_mpirun() -> str | None:
    """mpirun beside the interpreter (pip's mpich) or on PATH."""
    local = Path(sys.executable).with_name("mpirun")
    return str(local) if local.exists() else shutil.which("mpirun")


def make_generated(path: Path, n: int = 40, geometry: str = "ds2", layout: StoreLayout = StoreLayout(8, 16),
                   complete: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A store shaped like pipeline.generate's sample: 'generation' attrs, the block markers and manifest beside it."""
    g = load_geometry(geometry)
    attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "geometry": g.to_dict(),
             "units": {"showers": "MeV", "incident_energies": "MeV"}, "split": {"validation_chunks": []},
             "generation": {"seed": seed, "n": n, "model": "final", "sample_steps": 2}}
    group = create_arrays(path, g, n, layout, attrs)
    e, s = random_batch(geometry, n, seed)
    s = s.astype(np.float32)
    group["showers"][:] = s
    group["incident_energies"][:] = e
    sample_blocks_dir(path).mkdir()
    (sample_blocks_dir(path) / "block_0000000.json").write_text(json.dumps({"rows": [0, n]}))
    if complete:
        group.attrs.update({"complete": True})
        sample_manifest(path).write_text(json.dumps({"n": n}))
    return e, s.reshape(n, -1)


def stand_in_store(tmp_path, geometry: str, n: int) -> ShowerStore:
    """A tiny store from the stand-in simulator when it is available, random showers otherwise."""
    from data_tools.convert import convert

    path = tmp_path / "standin.hdf5"
    try:
        from data_tools.simulate import simulate_file
    except ImportError:
        write_random_showers(path, n, geometry, seed=3)
    else:
        simulate_file(path, geometry, n, seed=3)
    return ShowerStore(convert([path], tmp_path / "s.zarr", geometry, layout=StoreLayout(8, 32),
                               validation_fraction=0.0, progress=False))


def inputs(shape: tuple[int, ...], b: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, *shape, generator=gen, dtype=dtype), torch.rand(b, generator=gen, dtype=dtype),
            torch.randn(b, generator=gen, dtype=dtype), torch.randn(b, shape[0], generator=gen, dtype=dtype))


@pytest.fixture
def jobs():
    """SLURM jobs (tests/slurm_jobs.py's SlurmJob) to cancel if a test fails half-way."""
    started: list = []
    yield started
    for job in started:
        job.cancel_if_running()
