"""The layer energies alone: synthesis (synthesize_layers), their comparison
(evaluation.layer_fidelity), and the sampling-time clip of the clean-sample estimate
(sampling.clip_x)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig, load_config
from pipeline.config.loader import ConfigError
from pipeline.diffusion import (
    CosineSchedule,
    NetworkSampling,
    shower_seed,
    synthesize,
    synthesize_layers,
)
from pipeline.diffusion.schedule import clipped_x
from pipeline.evaluation.layer_fidelity import compare_layer_energies, layer_features
from pipeline.models import build_models
from pipeline.physics.geometry import load_geometry
from pipeline.physics.preprocessing import logit

from conftest import REPO, make_preprocessor, randomize_zero_init


def test_synthesize_layers_gives_the_layer_energies_of_synthesize():
    pre, _, _ = make_preprocessor("ds2")
    layer_net, voxel_net = (randomize_zero_init(m).eval()
                            for m in build_models(ModelConfig(), load_geometry("ds2")))
    energies = torch.tensor([2e3, 5e4, 3e5])
    seeds = [shower_seed(3, i) for i in range(3)]
    layer, voxel = NetworkSampling(layer_net, 2), NetworkSampling(voxel_net, 2)
    showers = synthesize(energies, seeds, layer, voxel, pre, threshold=False)
    layers = synthesize_layers(energies, seeds, layer, pre, threshold=False)
    torch.testing.assert_close(layers, showers.sum(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    thresholded = synthesize_layers(energies, seeds, layer, pre)
    assert torch.equal(thresholded, torch.where(layers >= pre.threshold_mev, layers, 0.0))


def test_clipped_x_keeps_the_clean_estimate_in_range():
    schedule = CosineSchedule()
    z = torch.randn(64, 5, dtype=torch.float64) * 3
    t = torch.rand(64, dtype=torch.float64)
    lo, hi = (torch.full((5,), -1.0, dtype=torch.float64),
              torch.linspace(0.5, 2.0, 5, dtype=torch.float64))
    raw = lambda z, t: torch.randn_like(z) * 5  # noqa: E731 - any v-predictor
    torch.manual_seed(0)
    v = clipped_x(raw, schedule, lo, hi)(z, t)
    alpha, sigma = schedule.alpha_sigma(t, like=z)
    x = alpha * z - sigma * v
    assert (x >= lo - 1e-9).all() and (x <= hi + 1e-9).all()
    torch.manual_seed(0)
    inside = alpha * z - sigma * raw(z, t)
    keep = (inside > lo) & (inside < hi)
    torch.testing.assert_close(x[keep], inside[keep])


def test_preprocessor_bounds_are_the_fractions_0_and_1():
    pre, _, _ = make_preprocessor("ds2")
    (llo, lhi), (vlo, vhi) = pre.bounds()
    ends = logit(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(llo * pre.layer_std + pre.layer_mean, ends[0].expand(45))
    torch.testing.assert_close(vhi * pre.voxel_std + pre.voxel_mean, ends[1].expand_as(vhi),
                               rtol=2e-3, atol=0)  # float32
    assert vlo.shape == (45, 1, 9) and (vlo < vhi).all()


def test_compare_layer_energies_sees_a_scaled_sample_and_not_an_identical_one():
    rng = np.random.default_rng(0)
    e_inc = 10 ** rng.uniform(3, 6, 4000)
    frac = rng.dirichlet(np.ones(5), 4000) * rng.uniform(0.7, 0.9, (4000, 1))
    layers = frac * e_inc[:, None]
    layers[rng.random(layers.shape) < 0.1] = 0.0
    half = slice(0, 2000), slice(2000, 4000)
    same = compare_layer_energies(layers[half[0]], layers[half[1]], e_inc[half[0]], e_inc[half[1]],
                                  bins=20)
    scaled = compare_layer_energies(1.05 * layers[half[0]], layers[half[1]], e_inc[half[0]],
                                    e_inc[half[1]], bins=20)
    assert (same["etot_einc"] < 3 * same["etot_einc_floor"]
            and scaled["etot_einc"] > 10 * scaled["etot_einc_floor"])
    assert np.allclose(scaled["response_ratio_by_energy"],
                       1.05 * np.asarray(same["response_ratio_by_energy"]))
    assert (same["etot_above_einc"] == 0
            and same["empty_layers_generated"] == pytest.approx(0.1, abs=0.02))
    x = layer_features(layers[:3], e_inc[:3])
    assert x.shape == (3, 7) and np.allclose(x[:, 0], np.log10(e_inc[:3]), atol=1e-5)


def test_energy_max_freq_config():
    with pytest.raises(ConfigError, match="model.energy_max_freq"):
        load_config(REPO / "configs" / "smoke.yaml", ["model.energy_max_freq=0.5"])
    layer_net, voxel_net = build_models(ModelConfig(energy_max_freq=4.0), load_geometry("ds2"))
    assert layer_net.energy_emb.max_freq == voxel_net.energy_emb.max_freq == 4.0
