"""The counter-based noise: a pure function of (seed, stream, step, element), exact integer arithmetic,
Gaussian to the precision a few hundred thousand draws can show, independent between showers and steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pipeline.diffusion import (
    NoiseSource,
    counter_normals,
    shower_seed,
    stream_keys,
    uniform_from_seeds,
)

SEEDS = [shower_seed(7, i) for i in range(12)]


def _lowbias32_uint32(x: np.ndarray) -> np.ndarray:
    """Reference implementation in native uint32 wrapping arithmetic (independent of the int64 trick)."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x21F0AAAD)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x735A2D97)
    x ^= x >> np.uint32(15)
    return x


def _reference_normals(keys: np.ndarray, n: int) -> np.ndarray:
    """float64 Box-Muller from uint32 hashes computed with numpy's native wrap-around."""
    half = (n + 1) // 2
    j = np.arange(half, dtype=np.uint64)
    words = []
    for mult, offset in ((keys[0], keys[1]), (keys[2], keys[3])):
        x = (j[None, :] * mult.astype(np.uint64)[:, None] + offset.astype(np.uint64)[:, None]) & np.uint64(0xFFFFFFFF)
        words.append(_lowbias32_uint32(x).astype(np.float64))
    radius = np.sqrt(-2 * np.log((words[0] + 0.5) * 2.0**-32))
    angle = 2 * math.pi * words[1] * 2.0**-32
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :n]


def test_integer_hash_matches_a_native_uint32_reference():
    """No int64 operation overflows: the noise equals a uint32 reference up to float32 rounding."""
    keys = stream_keys(SEEDS, "voxels", 3)
    assert keys.min() >= 0 and (keys[0] % 2 == 1).all() and keys[0].max() < 2**31 and keys[1].max() < 2**32
    ours = counter_normals(torch.from_numpy(keys), 1001).double().numpy()
    np.testing.assert_allclose(ours, _reference_normals(keys, 1001), rtol=0, atol=2e-5)


def test_noise_is_a_function_of_seed_stream_and_step_only():
    shape = (5, 7, 3)
    together = NoiseSource(SEEDS)(shape, 2, "voxels")
    # any split, order or pass size gives every shower the same bits
    apart = torch.cat([NoiseSource(SEEDS[i:i + 5])(shape, 2, "voxels") for i in range(0, 12, 5)])
    assert torch.equal(together, apart)
    assert torch.equal(NoiseSource(SEEDS[::-1])(shape, 2, "voxels"), together.flip(0))
    keys = torch.from_numpy(stream_keys(SEEDS, "voxels", 2))
    for chunk in (1, 50, 10**6):
        assert torch.equal(counter_normals(keys, math.prod(shape), chunk=chunk).reshape(12, *shape), together)
    # and changes with each of them
    assert not torch.equal(together, NoiseSource(SEEDS)(shape, 3, "voxels"))
    assert not torch.equal(together, NoiseSource(SEEDS)(shape, 2, "layers"))
    assert not torch.equal(together, NoiseSource([s + 1 for s in SEEDS])(shape, 2, "voxels"))
    assert NoiseSource(SEEDS, dtype=torch.float64)(shape, 2, "voxels").dtype == torch.float64


def test_noise_is_standard_normal_and_independent():
    seeds = [shower_seed(0, i) for i in range(64)]
    z = NoiseSource(seeds)((45, 50, 18), 0, "voxels").double().reshape(64, -1)
    flat = z.flatten().numpy()
    assert abs(flat.mean()) < 5 / math.sqrt(flat.size) and abs(flat.std() - 1) < 5 / math.sqrt(2 * flat.size)
    assert stats.kstest(flat[::7], "norm").pvalue > 1e-3
    assert abs(stats.kurtosis(flat)) < 0.02 and np.abs(flat).max() < 6.7  # tails of 32-bit uniforms
    # neighbouring elements, consecutive showers, consecutive steps and the two streams are uncorrelated
    sd = 5 / math.sqrt(flat.size)
    assert abs(np.corrcoef(z[:, :-1].flatten(), z[:, 1:].flatten())[0, 1]) < sd
    assert abs(np.corrcoef(z[:-1].flatten(), z[1:].flatten())[0, 1]) < sd
    next_step = NoiseSource(seeds)((45, 50, 18), 1, "voxels").double().reshape(64, -1)
    assert abs(np.corrcoef(z.flatten(), next_step.flatten())[0, 1]) < sd
    # the two halves of a row come from the same uniforms: cos and sin of one angle are uncorrelated
    half = z.shape[1] // 2
    assert abs(np.corrcoef(z[:, :half].flatten(), z[:, half:2 * half].flatten())[0, 1]) < sd


def test_uniform_energies_are_batch_independent_and_uniform():
    seeds = [shower_seed(3, i) for i in range(20000)]
    u = uniform_from_seeds(seeds)
    np.testing.assert_array_equal(u[100:110], uniform_from_seeds(seeds[100:110]))
    assert u.min() >= 0 and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-3
    assert uniform_from_seeds([]).shape == (0,)


@pytest.mark.parametrize("bad", [[-1], [2**64]])
def test_bad_seeds_are_refused(bad):
    with pytest.raises((ValueError, OverflowError)):
        NoiseSource(bad)((3,), 0, "voxels")
    with pytest.raises(ValueError, match="step"):
        NoiseSource([1])((3,), -1, "voxels")
