import numpy as np
import pytest

from pipeline.physics.geometry import load_geometry
from pipeline.physics.shower_stats import (
    LOGIT_ALPHA,
    Moments,
    block_stats,
    logit_fraction,
    merge_stats,
    stats_from_dict,
    stats_to_dict,
)


def test_moments_merge_equals_whole_sample():
    x = np.random.default_rng(0).normal(3.0, 2.0, (1000, 5))
    whole = Moments.of(x)
    for cuts in ([500], [1, 2, 999], [10, 300, 301, 700]):
        parts = [Moments.of(p) for p in np.split(x, cuts)]
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.merge(p)
        assert merged.count == 1000
        np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-13)
        np.testing.assert_allclose(merged.std, x.std(0), rtol=1e-12)
        np.testing.assert_array_equal(merged.min, x.min(0))
        np.testing.assert_array_equal(merged.max, x.max(0))
    np.testing.assert_allclose(whole.std, x.std(0), rtol=1e-12)


def test_logit_fraction_is_finite_at_the_ends():
    y = logit_fraction(np.array([0.0, 0.5, 1.0, 2.0, -1.0]))
    assert np.all(np.isfinite(y))
    assert y[0] == pytest.approx(np.log(LOGIT_ALPHA / (1 - LOGIT_ALPHA)))
    assert y[1] == pytest.approx(0.0, abs=1e-12) and y[2] == pytest.approx(-y[0]) and y[3] == y[2] and y[4] == y[0]


def test_block_stats_merge_independent_of_blocking_and_round_trip_json():
    g = load_geometry("ds2")
    rng = np.random.default_rng(1)
    e = 10 ** rng.uniform(3, 6, 64)
    showers = rng.gamma(1.0, 3.0, (64, *g.shape)).astype(np.float32)
    showers[rng.random(showers.shape) < 0.7] = 0
    whole = block_stats(e, showers, g)
    merged = merge_stats([block_stats(e[a:a + 16], showers[a:a + 16], g) for a in range(0, 64, 16)])
    for key in whole:
        np.testing.assert_allclose(merged[key].mean, whole[key].mean, rtol=1e-9, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(merged[key].std, whole[key].std, rtol=1e-6, atol=1e-9, err_msg=key)
    assert whole["logit_voxel_fraction"].mean.shape == (45, 9)  # per (layer, radius), pooled over angle
    assert whole["layer_fraction"].mean.shape == (45,)
    layer = showers.sum(axis=(2, 3)) / e[:, None]
    np.testing.assert_allclose(whole["layer_fraction"].mean, layer.mean(0), rtol=1e-5)
    np.testing.assert_allclose(whole["zero_fraction"].mean, (showers == 0).mean(axis=(0, 2, 3)), rtol=1e-12)
    back = stats_from_dict(stats_to_dict(whole))
    for key in whole:
        np.testing.assert_array_equal(back[key].mean, whole[key].mean)
        np.testing.assert_array_equal(back[key].m2, whole[key].m2)
