"""The sensitivity benchmark's distortions do what their names say, by the amount their strength says."""

from __future__ import annotations

import numpy as np

from data_tools.shower_model import sample_incident_energies, simulate_showers
from pipeline.data.samples import ArraySample
from pipeline.evaluation import distortions
from pipeline.physics.geometry import load_geometry

G = load_geometry("ds2")


def _showers(n: int = 20) -> np.ndarray:
    s = simulate_showers(G, sample_incident_energies(n, 3), 3).astype(np.float64)
    s[s < G.threshold_mev] = 0.0
    return s


def test_smears_and_shifts_keep_the_energy_and_move_the_stated_fraction() -> None:
    s = _showers()
    grid = s.reshape(-1, *G.shape)
    smeared = distortions.smear_radial(s, G, 0.1).reshape(-1, *G.shape)
    np.testing.assert_allclose(smeared.sum(axis=(2, 3)), grid.sum(axis=(2, 3)), rtol=1e-12)  # layer energies kept
    np.testing.assert_allclose(smeared[..., 0], 0.9 * grid[..., 0])  # the innermost bin gives 10 %, receives none
    deeper = distortions.shift_longitudinal(s, G, 0.05).reshape(-1, *G.shape)
    np.testing.assert_allclose(deeper.sum(axis=(1, 2, 3)), grid.sum(axis=(1, 2, 3)), rtol=1e-12)  # E_tot kept
    np.testing.assert_allclose(deeper[:, 0], 0.95 * grid[:, 0])
    front = distortions.scale_layers(s, G, slice(0, 15), 1.1).reshape(-1, *G.shape)
    np.testing.assert_allclose(front[:, :15], 1.1 * grid[:, :15])
    np.testing.assert_array_equal(front[:, 15:], grid[:, 15:])


def test_threshold_and_noise_hits() -> None:
    s = _showers()
    cut = distortions.drop_near_threshold(s, G, 2.0)
    assert not ((cut > 0) & (cut < 2 * G.threshold_mev)).any() and (cut[cut > 0] == s[cut > 0]).all()
    noisy = distortions.add_noise_hits(s, G, 0.01, first_row=100)
    added = noisy - s
    assert abs((added > 0).mean() - 0.01) < 0.003
    assert added[added > 0].min() >= G.threshold_mev and added.max() <= 10 * G.threshold_mev
    again = distortions.add_noise_hits(s[5:], G, 0.01, first_row=105)  # depends on the row index, not the block
    np.testing.assert_array_equal(again, noisy[5:])


def test_distorted_sample_applies_the_distortion_as_it_reads() -> None:
    s = _showers()
    base = ArraySample(s, np.full(len(s), 1e4), G)
    case = next(c for c in distortions.sensitivity_cases(G) if c.name == "energy scale 2 %")
    sample = distortions.DistortedSample(base, case.apply, case.name)
    block = next(sample.blocks(7))
    np.testing.assert_allclose(block.showers, np.where(1.02 * s[:7] >= G.threshold_mev, 1.02 * s[:7], 0), rtol=1e-6)
    names = [c.name for c in distortions.sensitivity_cases(G)]
    assert len(names) == len(set(names)) and "radial smear 1 %" in names
    plain = distortions.sensitivity_cases(G)[0]  # the baseline: the sample as simulated
    assert plain.family == distortions.UNDISTORTED and plain.strength == 0
    np.testing.assert_array_equal(plain.apply(s, np.full(len(s), 1e4), G), s)
