"""Invertible preprocessing: round trips, energy conservation, threshold, standardisation from a store."""

from __future__ import annotations

import pytest
import torch

from data_tools.convert import convert
from pipeline.config import StoreLayout
from pipeline.data.shower_store import ShowerStore
from pipeline.physics.geometry import load_geometry
from pipeline.physics.preprocessing import Preprocessor, inverse_logit, logit
from pipeline.physics.shower_stats import block_stats, stats_to_dict

from conftest import make_preprocessor, random_batch, write_random_showers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_logit_inverse_round_trip():
    x = torch.tensor([0.0, 1e-9, 1e-6, 0.3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(inverse_logit(logit(x)), x, rtol=1e-9, atol=1e-15)
    assert inverse_logit(torch.tensor([-1e3, 1e3])).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("geometry", ["ds2", "ds3"])
def test_round_trip_float64_is_exact(geometry):
    pre, showers, energies = make_preprocessor(geometry)
    pre = pre.double()
    out = pre(showers, energies)
    assert out.layers.shape == showers.shape[:2] and out.voxels.shape == showers.shape and out.cond.shape == (16,)
    back = pre.inverse(out.layers, out.voxels, energies, threshold=False)
    torch.testing.assert_close(back, showers, rtol=1e-9, atol=1e-10)
    assert (back[0, -3:] < 1e-12).all()  # empty layers come back empty up to rounding of the logit
    assert (pre.inverse(out.layers, out.voxels, energies)[0, -3:] == 0).all()


def test_round_trip_float32_and_threshold():
    pre, showers, energies = make_preprocessor("ds3")
    s32 = showers.float()
    out = pre(s32, energies)
    assert out.layers.dtype == out.voxels.dtype == out.cond.dtype == torch.float32
    back = pre.inverse(out.layers, out.voxels, energies, threshold=False)
    torch.testing.assert_close(back, s32, rtol=2e-4, atol=1e-5)
    thr = load_geometry("ds3").threshold_mev
    assert abs(thr - 0.01515) < 1e-5
    cut = pre.inverse(out.layers, out.voxels, energies)  # threshold applied on the way out
    expected = torch.where(s32 >= thr, s32, 0.0)
    assert ((cut == 0) == (expected == 0)).float().mean() > 0.9999  # only voxels at the threshold may flip
    torch.testing.assert_close(cut, expected, rtol=2e-4, atol=thr * 1.01)
    assert ((cut == 0) | (cut >= thr)).all() and (s32 < thr).logical_and(s32 > 0).any()


@pytest.mark.parametrize("geometry", ["ds2", "ds3"])
def test_generated_values_conserve_layer_energy(geometry):
    pre, showers, energies = make_preprocessor(geometry)
    gen = torch.Generator().manual_seed(3)
    layers = 2 * torch.randn(showers.shape[:2], generator=gen)
    voxels = 3 * torch.randn(showers.shape, generator=gen)
    voxels[1, 4] = -1e4  # every fraction of this layer is zero after the inverse logit: spread uniformly
    e_layer = pre.layer_energies(layers, energies)
    raw = pre.inverse(layers, voxels, energies, threshold=False)
    assert (raw >= 0).all() and (e_layer >= 0).all() and (e_layer <= energies[:, None]).all()
    torch.testing.assert_close(raw.sum(dim=(2, 3)), e_layer, rtol=1e-5, atol=0)
    assert torch.allclose(raw[1, 4], e_layer[1, 4] / raw[1, 4].numel())
    out = pre.inverse(layers, voxels, energies)
    assert ((out == 0) | (out >= pre.threshold_mev)).all() and (out <= raw).all()


def test_forward_commutes_with_angular_rolls():
    pre, showers, energies = make_preprocessor("ds3")
    a = pre(torch.roll(showers, 7, dims=2), energies)
    b = pre(showers, energies)
    torch.testing.assert_close(a.voxels, torch.roll(b.voxels, 7, dims=2))
    torch.testing.assert_close(a.layers, b.layers)


def test_from_store_standardises(tmp_path):
    path = tmp_path / "r.hdf5"
    energies, flat = write_random_showers(path, 64, "ds2", seed=2)
    store = ShowerStore(convert([path], tmp_path / "r.zarr", "ds2", layout=StoreLayout(8, 32),
                                validation_fraction=0.0, progress=False))
    pre = Preprocessor.from_store(store)
    showers = torch.from_numpy(flat.reshape(64, *store.geometry.shape)).float()
    out = pre(showers, torch.from_numpy(energies))
    assert out.cond.mean().abs() < 1e-4 and (out.cond.std(unbiased=False) - 1).abs() < 1e-3
    assert out.layers.mean(0).abs().max() < 1e-3
    assert out.voxels.mean(dim=(0, 2)).abs().max() < 1e-3  # per (layer, radius), pooled over angle
    assert set(dict(pre.named_buffers())) >= {"layer_mean", "layer_std", "voxel_mean", "voxel_std"}


def test_rejects_mismatched_shapes():
    pre, showers, energies = make_preprocessor("ds2")
    with pytest.raises(ValueError, match="do not match geometry shape"):
        pre(showers[:, :, :8], energies)
    stats = stats_to_dict(block_stats(*random_batch("ds2", 4), load_geometry("ds2")))
    with pytest.raises(ValueError, match="do not fit geometry ds3"):
        Preprocessor(stats, load_geometry("ds3"))
    with pytest.raises(ValueError, match="not regular"):
        Preprocessor(stats, load_geometry("ds1-photons"))


def test_dequantised_empty_voxels_stay_below_the_threshold_and_invert_to_the_data():
    pre, showers, energies = make_preprocessor("ds2")
    showers = showers.float()
    plain = pre(showers, energies)
    deq = pre(showers, energies, dequantize=torch.Generator().manual_seed(0))
    empty = (showers <= 0) & (showers.sum(dim=(2, 3), keepdim=True) > 0)
    assert empty.any() and not torch.equal(deq.voxels[empty], plain.voxels[empty])
    torch.testing.assert_close(deq.voxels[~empty], plain.voxels[~empty])
    torch.testing.assert_close(deq.layers, plain.layers)
    # the inverse with threshold-aware fractions maps every dequantised voxel back to 0 and keeps the hits
    back = pre.inverse(deq.layers, deq.voxels, energies, threshold_fractions=True)
    torch.testing.assert_close(back, pre.apply_threshold(showers), rtol=2e-3, atol=2e-4)
    # without it the sub-threshold mass is taken from the hits: layers lose energy
    lossy = pre.inverse(deq.layers, deq.voxels, energies)
    assert lossy.sum() < 0.99 * back.sum()


def test_threshold_aware_fractions_keep_a_layer_that_would_be_emptied():
    pre, showers, energies = make_preprocessor("ds2")
    p = pre(showers.float(), energies)
    flat = torch.zeros_like(p.voxels)  # every fraction equal: all below threshold / E_layer in big layers
    a = pre.inverse(p.layers, flat, energies, threshold=False, threshold_fractions=True)
    b = pre.inverse(p.layers, flat, energies, threshold=False)
    torch.testing.assert_close(a.sum(dim=(2, 3)), b.sum(dim=(2, 3)))
