"""The stand-in shower simulator: realism against the spec's Geant4 targets, determinism, format, CLI.

Realism tolerances are 4 standard errors of the test sample (computed from the sample itself); the
typical standard errors are noted beside each test. Seeds are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_tools.plot_showers import main as plot_main
from data_tools.shower_model import (
    BLOCK,
    DEFAULT_PARAMS,
    sample_incident_energies,
    simulate_showers,
    with_params,
)
from data_tools.simulate import simulate_file
from pipeline.physics.geometry import load_geometry

from conftest import run_module

DATA = Path(__file__).resolve().parent / "data"
K_SE = 4.0  # tolerance in standard errors
#: spec section 4.1 (CaloDiffusion constants computed on the Geant4 files)
LOGIT_TARGETS = {"ds2": (-12.856, 1.912), "ds3": (-13.475, 1.107)}
ZERO_RANGES = {"ds2": (0.72, 0.76), "ds3": (0.87, 0.90)}
RESPONSE_TARGET = 0.785
SAMPLE_SIZES = {"ds2": 3000, "ds3": 1000}  # about 2-3 s each


def _logit(showers: np.ndarray, e_inc: np.ndarray) -> np.ndarray:
    y = 1e-6 + (1 - 2e-6) * showers.astype(np.float64) / (2.0 * e_inc[:, None])
    return np.log(y) - np.log1p(-y)


@dataclasses.dataclass
class Sample:
    e: np.ndarray  # (N,) incident energies
    layers: np.ndarray  # (N, L) layer energies
    m1: np.ndarray  # (N,) per-shower mean of the voxel logit
    m2: np.ndarray  # (N,) per-shower mean of its square
    zero: np.ndarray  # (N,) per-shower zero-voxel fraction


_SAMPLES: dict[str, Sample] = {}


def realism_sample(name: str) -> Sample:
    """Log-uniform sample of the default model, reduced block by block to per-shower statistics."""
    if name not in _SAMPLES:
        g, n, seed = load_geometry(name), SAMPLE_SIZES[name], 2024
        e = sample_incident_energies(n, seed)
        parts = []
        for a in range(0, n, 250):
            s = simulate_showers(g, e[a : a + 250], seed, a)
            lg = _logit(s, e[a : a + 250])
            parts.append((s.reshape(len(s), g.n_layers, -1).sum(-1, dtype=np.float64), lg.mean(1),
                          (lg**2).mean(1), (s == 0).mean(1)))
        _SAMPLES[name] = Sample(e, *(np.concatenate(p) for p in zip(*parts)))
    return _SAMPLES[name]


# ------------------------------------------------------------------------------------- realism


@pytest.mark.parametrize("name", ["ds2", "ds3"])
def test_mean_response_flat_in_energy(name: str) -> None:
    s = realism_sample(name)
    ratio = s.layers.sum(1) / s.e
    se = ratio.std() / np.sqrt(ratio.size)  # ds2: 0.0009, ds3: 0.0015
    assert abs(ratio.mean() - RESPONSE_TARGET) < K_SE * se, (ratio.mean(), se)
    # "Nearly flat": each decade of E within 0.01 (1.3 %) of the overall mean; the decade means are
    # known to SE 0.0003 (100-1000 GeV) .. 0.005 (1-10 GeV), so this resolves a 1 % trend.
    decade = np.floor(np.log10(s.e) - 3).clip(0, 2)
    for d in range(3):
        r = ratio[decade == d]
        assert r.std() / np.sqrt(r.size) < 0.005
        assert abs(r.mean() - ratio.mean()) < 0.01, (d, r.mean(), ratio.mean())


@pytest.mark.parametrize("name", ["ds2", "ds3"])
def test_logit_moments(name: str) -> None:
    s = realism_sample(name)
    n = s.m1.size
    mean = s.m1.mean()  # every shower has the same number of voxels
    std = np.sqrt(s.m2.mean() - mean**2)
    se_mean = s.m1.std() / np.sqrt(n)  # ds2: 0.011, ds3: 0.009
    grad = np.array([-mean / std, 0.5 / std])  # delta method for std = sqrt(E[m2] - E[m1]^2)
    se_std = np.sqrt(grad @ np.cov(np.stack([s.m1, s.m2])) @ grad / n)  # ds2: 0.005, ds3: 0.009
    target_mean, target_std = LOGIT_TARGETS[name]
    assert abs(mean - target_mean) < K_SE * se_mean, (mean, se_mean)
    assert abs(std - target_std) < K_SE * se_std, (std, se_std)


@pytest.mark.parametrize("name", ["ds2", "ds3"])
def test_zero_fraction(name: str) -> None:
    s = realism_sample(name)
    se = s.zero.std() / np.sqrt(s.zero.size)  # ds2: 0.004, ds3: 0.004, well below the target range width
    lo, hi = ZERO_RANGES[name]
    assert se < (hi - lo) / 4
    assert lo < s.zero.mean() < hi, s.zero.mean()


@pytest.mark.parametrize("name", ["ds2", "ds3"])
def test_layer_energy_correlations(name: str) -> None:
    s = realism_sample(name)
    pcc = np.corrcoef(s.layers.T)
    ref = np.load(DATA / f"geant4_layer_energy_pcc_{name}.npy")
    # Sampling noise of one coefficient is (1 - rho^2)/sqrt(N) <~ 0.02 (ds2) / 0.03 (ds3); the
    # model's own mean |difference| is about 0.05 (spec prototype: 0.05); the bound is the issue's.
    assert np.isfinite(pcc).all()
    assert np.abs(pcc - ref).mean() <= 0.06


@pytest.mark.parametrize("energy_mev, layer", [(1e3, 4), (1e4, 7), (1e5, 10), (1e6, 13)])
def test_depth_of_shower_maximum(energy_mev: float, layer: int) -> None:
    # The longitudinal model does not depend on the lateral binning: use the cheaper ds2.
    g, n = load_geometry("ds2"), 1000
    s = simulate_showers(g, np.full(n, energy_mev), seed=7)
    layers = s.reshape(n, g.n_layers, -1).sum(-1, dtype=np.float64)
    profile = layers.mean(0)
    peak = int(profile.argmax())
    assert abs(peak - layer) <= 1, (peak, layer)
    # the target layer is statistically compatible with the maximum (paired SE: 0.3-1.5 % of the peak)
    diff = layers[:, peak] - layers[:, layer]
    assert diff.mean() <= K_SE * diff.std() / np.sqrt(n), (peak, layer, profile[peak - 1 : peak + 2])


def test_voxel_order_and_threshold() -> None:
    g = load_geometry("ds3")
    e = np.full(50, 1e5)
    s = simulate_showers(g, e, seed=3, dtype=np.float64)
    nz = s[s > 0]
    assert nz.min() >= g.threshold_mev and np.isfinite(s).all()
    mean = s.reshape(50, *g.shape).mean(0)  # (L, A, R): radius fastest
    radial, angular = mean.sum((0, 1)), mean.sum((0, 2))
    assert radial[0] > 10 * radial[-1]  # energy falls steeply with radius
    assert angular.std() / angular.mean() < 0.1  # and is azimuthally uniform
    lowered = simulate_showers(g, e, seed=3, dtype=np.float64, params=with_params(threshold_mev=0.0))
    assert (lowered > 0).sum() > (s > 0).sum()


# ----------------------------------------------------------------------------------- determinism


def test_library_determinism_and_range_split() -> None:
    g = load_geometry("ds2")
    n = BLOCK + 40  # crosses a block boundary
    e = sample_incident_energies(n, seed=5)
    whole = simulate_showers(g, e, seed=5)
    assert np.array_equal(whole, simulate_showers(g, e, seed=5))
    assert not np.array_equal(whole, simulate_showers(g, e, seed=6))
    cut = 37
    parts = np.concatenate([simulate_showers(g, e[:cut], 5, 0), simulate_showers(g, e[cut:], 5, cut)])
    assert np.array_equal(whole, parts)
    # a shower does not depend on the others' energies either
    other = e.copy()
    other[:cut] = 1e6
    assert np.array_equal(simulate_showers(g, other, seed=5)[cut:], whole[cut:])
    single = simulate_showers(g, e[70:71], seed=5, first_index=70, dtype=np.float64)
    assert np.array_equal(single.astype(np.float32), whole[70:71])


def test_incident_energies() -> None:
    e = sample_incident_energies(4000, seed=1)
    assert np.array_equal(e[100:300], sample_incident_energies(200, seed=1, first_index=100))
    assert e.min() >= 1e3 and e.max() <= 1e6
    u = (np.log10(e) - 3) / 3  # log-uniform: u ~ U(0, 1), SE of its mean 0.0046
    assert abs(u.mean() - 0.5) < K_SE * np.sqrt(1 / 12 / u.size)
    assert np.array_equal(sample_incident_energies(3, seed=1, energy=5e3), [5e3] * 3)
    cyc = sample_incident_energies(5, seed=1, first_index=2, energies=[1e3, 1e4, 1e5])
    assert np.array_equal(cyc, [1e5, 1e3, 1e4, 1e5, 1e3])  # shower i gets energies[i % 3]
    for bad in (dict(energy=999.0), dict(energy=1.1e6), dict(energies=[1e3, np.nan]), dict(energies=[])):
        with pytest.raises(ValueError):
            sample_incident_energies(3, seed=1, **bad)


def test_library_errors() -> None:
    with pytest.raises(ValueError, match="not supported"):
        simulate_showers(load_geometry("ds1-photons"), [1e4], seed=0)
    with pytest.raises(ValueError, match="outside"):
        simulate_showers(load_geometry("ds2"), [5e2], seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_PARAMS.resp = 1.0  # type: ignore[misc]


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["incident_energies"][:], f["showers"][:]


def test_file_format_and_content(tmp_path: Path) -> None:
    path = simulate_file(tmp_path / "s.hdf5", "ds2", 30, seed=9)
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == {"incident_energies", "showers"}
        e, s = f["incident_energies"], f["showers"]
        assert e.shape == (30, 1) and s.shape == (30, 6480)
        assert e.dtype == np.float64 and s.dtype == np.float64
        assert e.compression == "gzip" and s.compression == "gzip"
        energies, showers = e[:, 0], s[:]
    assert np.array_equal(energies, sample_incident_energies(30, seed=9))
    assert np.array_equal(showers, simulate_showers(load_geometry("ds2"), energies, 9, dtype=np.float64))
    assert [p.name for p in tmp_path.iterdir()] == ["s.hdf5"]  # no .partial left
    path32 = simulate_file(tmp_path / "s32.hdf5", "ds2", 30, seed=9, dtype="float32")
    e32, s32 = _read(path32)
    assert s32.dtype == np.float32 and np.array_equal(s32, showers.astype(np.float32))
    with pytest.raises(FileExistsError):
        simulate_file(path, "ds2", 5, seed=1)
    simulate_file(path, "ds2", 5, seed=1, overwrite=True)
    assert _read(path)[1].shape == (5, 6480)


@pytest.mark.slow
def test_file_workers_and_ranges_identical(tmp_path: Path) -> None:
    n = 50  # ds3 float64 chunks hold 12 rows: several chunks and a partial last chunk
    one = simulate_file(tmp_path / "w1.hdf5", "ds3", n, seed=3)
    two = simulate_file(tmp_path / "w2.hdf5", "ds3", n, seed=3, workers=2)
    assert one.read_bytes() == two.read_bytes()
    a = simulate_file(tmp_path / "a.hdf5", "ds3", 17, seed=3)
    b = simulate_file(tmp_path / "b.hdf5", "ds3", n - 17, seed=3, first_index=17, workers=2)
    (e1, s1), (ea, sa), (eb, sb) = _read(one), _read(a), _read(b)
    assert np.array_equal(e1, np.concatenate([ea, eb])) and np.array_equal(s1, np.concatenate([sa, sb]))


# ------------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_writes_file_with_energy_list(tmp_path: Path) -> None:
    out = tmp_path / "cli.hdf5"
    r = run_module("data_tools.simulate", "--geometry", "ds3", "--n", "5", "--out", str(out), "--seed", "4",
                   "--energies", "1000,1e5", "--dtype", "float32", "--quiet")
    assert r.returncode == 0, r.stderr
    e, s = _read(out)
    assert np.array_equal(e[:, 0], [1e3, 1e5, 1e3, 1e5, 1e3]) and s.shape == (5, 40500) and s.dtype == np.float32
    r = run_module("data_tools.simulate", "--geometry", "ds2", "--n", "3", "--out", str(out), "--energy", "2e4",
                   "--overwrite", "--quiet")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(_read(out)[0][:, 0], [2e4] * 3)


BAD_ARGS = [
    (["--geometry", "ds7"], "--geometry", "unknown geometry"),
    (["--geometry", "ds1-photons"], "--geometry", "not supported"),
    (["--n", "0"], "--n", "positive"),
    (["--n", "ten"], "--n", "positive integer"),
    (["--energy", "500"], "--energy", "outside"),
    (["--energy", "2e6"], "--energy", "outside"),
    (["--energies", "1000,abc"], "--energies", "energy in MeV"),
    (["--energy", "1000", "--energies", "1000"], "--energies", "not allowed with"),
    (["--workers", "0"], "--workers", "positive"),
    (["--seed", "-1"], "--seed", "non-negative"),
    (["--dtype", "float16"], "--dtype", "invalid choice"),
    (["--out", "{tmp}/missing/x.hdf5"], "--out", "does not exist"),
    (["--out", "{tmp}"], "--out", "is a directory"),
    (["--out", "/proc/simulate_test.hdf5"], "--out", "cannot write"),
    (["--energies", "1000,5"], "--energies", "outside"),
]


@pytest.mark.slow
@pytest.mark.parametrize("changes, argument, message", BAD_ARGS, ids=[c[2] + c[1] for c in BAD_ARGS])
def test_cli_bad_arguments(tmp_path: Path, changes: list[str], argument: str, message: str) -> None:
    args = {"--geometry": "ds2", "--n": "4", "--out": str(tmp_path / "x.hdf5")}
    extra = []
    for key, value in zip(changes[::2], changes[1::2]):
        if key in args:
            args[key] = value.format(tmp=tmp_path)
        else:
            extra += [key, value]
    r = run_module("data_tools.simulate", *[x for kv in args.items() for x in kv], *extra)
    assert r.returncode == 2, r.stderr
    assert argument in r.stderr and message in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_refuses_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "x.hdf5"
    out.write_bytes(b"keep me")
    r = run_module("data_tools.simulate", "--geometry", "ds2", "--n", "4", "--out", str(out))
    assert r.returncode == 2 and "--out" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert out.read_bytes() == b"keep me" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.slow
def test_plot_showers(tmp_path: Path) -> None:
    path = simulate_file(tmp_path / "p.hdf5", "ds2", 40, seed=2)
    assert plot_main([str(path), "--geometry", "ds2", "--out", str(tmp_path / "plots"), "--dpi", "40"]) == 0
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"overview.png", "layers.png", "longitudinal.png", "radial.png", "response.png"} <= names
