"""High-level features on hand-made showers, streaming, HDF5 vs zarr, and malformed inputs."""

import math

import h5py
import numpy as np
import pytest

from data_tools.convert import convert
from pipeline.config import StoreLayout
from pipeline.data.calochallenge_hdf5 import shower_file_writer
from pipeline.data.samples import ArraySample, SampleError, check_compatible, open_sample
from pipeline.evaluation import distortions
from pipeline.evaluation.observables import (
    ENERGY_BINS_MEV,
    LayerMoments,
    compute_observables,
    energy_bin_index,
    high_level_features,
)
from pipeline.physics.geometry import load_geometry

from conftest import write_random_showers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _voxel(g, layer, alpha, radius):
    first = g.layers[layer]
    return g.layer_slices[layer].start + alpha * first.n_radial + radius


def test_features_of_hand_made_ds3_showers():
    g = load_geometry("ds3")
    spec = g.layers[0]
    showers = np.zeros((2, g.n_voxels), dtype=np.float32)
    # shower 0: 10 MeV in layer 3, angular bin 12, radial bin 4
    showers[0, _voxel(g, 3, 12, 4)] = 10.0
    # shower 1: two equal deposits opposite each other (alpha and alpha + pi) at radial bin 2 of layer 7
    showers[1, _voxel(g, 7, 0, 2)] = 3.0
    showers[1, _voxel(g, 7, 25, 2)] = 3.0
    f = high_level_features(showers, np.array([1000.0, 2000.0]), LayerMoments(g))
    r = 0.5 * (spec.r_edges[4] + spec.r_edges[5])
    a = 0.5 * (spec.alpha_edges[12] + spec.alpha_edges[13])
    assert f.ec_x[0, 3] == pytest.approx(r * math.cos(a), rel=1e-5)
    assert f.ec_y[0, 3] == pytest.approx(r * math.sin(a), rel=1e-5)
    assert f.width_x[0, 3] == pytest.approx(0, abs=1e-3) and f.width_y[0, 3] == pytest.approx(0, abs=1e-3)
    assert f.e_layer[0, 3] == pytest.approx(10.0) and f.e_tot[0] == pytest.approx(10.0)
    assert f.sparsity[0, 3] == pytest.approx(1 - 1 / 900) and f.sparsity[0, 0] == 1.0
    assert f.ec_x[0, 0] == 0.0 and f.width_x[0, 0] == 0.0  # empty layer
    r2 = 0.5 * (spec.r_edges[2] + spec.r_edges[3])
    a0 = 0.5 * (spec.alpha_edges[0] + spec.alpha_edges[1])
    assert f.ec_x[1, 7] == pytest.approx(0, abs=1e-5) and f.ec_y[1, 7] == pytest.approx(0, abs=1e-5)
    assert f.width_x[1, 7] == pytest.approx(abs(r2 * math.cos(a0)), rel=1e-4)
    assert f.width_y[1, 7] == pytest.approx(abs(r2 * math.sin(a0)), rel=1e-3)
    x = f.classifier_features()
    assert x.shape == (2, 1 + 45 + 4 * 45) and x[0, 0] == pytest.approx(3.0)
    assert x[0, 1 + 3] == pytest.approx(1.0) and x[0, 1] == pytest.approx(-8.0)  # log10(E_layer + 1e-8)
    obs = f.observables()
    assert len(obs) == 1 + 6 * 45 and obs["etot_einc"][0][1] == pytest.approx(6.0 / 2000)


def test_ds1_features_use_alpha_binned_layers_only():
    g = load_geometry("ds1-photons")
    m = LayerMoments(g)
    assert m.layers == g.relevant_layers and set(m.alpha_layers) < set(m.layers)
    assert all(g.layers[i].n_alpha > 1 for i in m.alpha_layers)
    rng = np.random.default_rng(0)
    showers = rng.gamma(1.0, 50.0, (20, g.n_voxels)).astype(np.float32)
    f = high_level_features(showers, np.full(20, 1e4), m)
    assert f.e_layer.shape == (20, len(m.layers)) and f.ec_x.shape == (20, len(m.alpha_layers))
    np.testing.assert_allclose(f.e_tot, showers.sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(f.e_layer, g.layer_energies(showers)[:, m.layers], rtol=1e-5)


def test_threshold_streaming_and_energy_bins():
    g = load_geometry("ds2")
    rng = np.random.default_rng(1)
    energies = np.array([1.5e3, 2e4, 3e5, 1e6, 5e5, 2e3, 4e4])
    showers = rng.gamma(0.5, 0.05, (7, g.n_voxels))  # many voxels below 15.15 keV
    sample = ArraySample(showers, energies, g)
    whole = compute_observables(sample, low_level_rows=np.array([1, 5]))
    blocks = compute_observables(sample, block_rows=2, low_level_rows=np.array([5, 1]))
    kept = np.where(showers >= g.threshold_mev, showers, 0).astype(np.float32)
    np.testing.assert_allclose(whole.hlf.e_tot, kept.sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(blocks.hlf.e_tot, whole.hlf.e_tot)
    np.testing.assert_array_equal(blocks.voxel_counts, whole.voxel_counts)
    assert whole.voxel_counts.sum() == np.count_nonzero(kept)
    np.testing.assert_allclose(blocks.shower_sum, kept.sum(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(whole.low_level.dense(np.arange(2)), blocks.low_level.dense(np.arange(2)))
    np.testing.assert_allclose(whole.low_level.dense(np.array([1])), (kept[[5]] * 100 / 2e3), rtol=1e-6)
    assert energy_bin_index(energies).tolist() == [0, 1, 2, 2, 2, 0, 1]
    assert whole.n_ebins.tolist() == [2, 2, 3] and len(ENERGY_BINS_MEV) == 3
    assert showers.min() < g.threshold_mev  # the input itself is left untouched


def test_hdf5_and_zarr_samples_agree(tmp_path):
    path = tmp_path / "s.hdf5"
    write_random_showers(path, 40, "ds3", seed=3)
    store = convert([path], tmp_path / "s.zarr", "ds3", layout=StoreLayout(8, 16), progress=False)
    a, b = open_sample(path, "ds3", "generated"), open_sample(store, None, "reference")
    assert a.geometry.name == b.geometry.name == "ds3" and a.n == b.n == 40
    assert open_sample(path).geometry.name == "ds3"  # geometry from the voxel count
    check_compatible(a, b)
    oa, ob = compute_observables(a, block_rows=16), compute_observables(b)
    np.testing.assert_allclose(oa.hlf.classifier_features(), ob.hlf.classifier_features(), rtol=1e-6)
    np.testing.assert_array_equal(oa.voxel_counts, ob.voxel_counts)


def _write(path, energies, showers):
    with shower_file_writer(path, len(energies), showers.shape[1]) as f:
        f["incident_energies"][:, 0] = energies
        f["showers"][:] = showers


def test_malformed_inputs_name_the_file(tmp_path):
    ds3, ds2 = tmp_path / "a_ds3.hdf5", tmp_path / "b_ds2.hdf5"
    write_random_showers(ds3, 8, "ds3")
    write_random_showers(ds2, 8, "ds2")
    with pytest.raises(SampleError, match=r"b_ds2\.hdf5.*'ds2'.*a_ds3\.hdf5.*'ds3'|a_ds3\.hdf5.*'ds3'.*b_ds2\.hdf5.*'ds2'"):
        check_compatible(open_sample(ds3, role="generated"), open_sample(ds2, role="reference"))
    with pytest.raises(SampleError, match=r"reference sample.*b_ds2\.hdf5.*6480 voxels"):
        open_sample(ds2, "ds3", "reference")
    store = convert([ds2], tmp_path / "b.zarr", "ds2", layout=StoreLayout(8, 8), progress=False)
    with pytest.raises(SampleError, match=r"b\.zarr: the store holds geometry 'ds2', not 'ds3'"):
        open_sample(store, "ds3", "generated")
    mismatched = tmp_path / "mismatch.hdf5"
    with h5py.File(mismatched, "w") as f:
        f["incident_energies"] = np.full((5, 1), 1e4)
        f["showers"] = np.zeros((4, 6480))
    with pytest.raises(SampleError, match=r"mismatch\.hdf5.*5 rows.*4"):
        open_sample(mismatched, "ds2")
    rng = np.random.default_rng(0)
    nan = tmp_path / "nan.hdf5"
    showers = rng.random((6, 6480))
    showers[4, 17] = np.nan
    _write(nan, np.full(6, 1e4), showers)
    with pytest.raises(SampleError, match=r"nan\.hdf5: showers row 4 holds NaN"):
        compute_observables(open_sample(nan, "ds2"))
    bad_e = tmp_path / "bad_energy.hdf5"
    _write(bad_e, np.array([1e4, np.nan, 1e4]), rng.random((3, 6480)))
    with pytest.raises(SampleError, match=r"bad_energy\.hdf5: incident energy of row 1"):
        compute_observables(open_sample(bad_e, "ds2"))
    with pytest.raises(SampleError, match=r"generated sample .*missing\.hdf5: no such file"):
        open_sample(tmp_path / "missing.hdf5", "ds2", "generated")
    with pytest.raises(SampleError, match="not a zarr store"):
        open_sample(tmp_path, "ds2")
    with pytest.raises(SampleError, match="match no known geometry"):
        odd = tmp_path / "odd.hdf5"
        _write(odd, np.full(2, 1e4), np.zeros((2, 77)))
        open_sample(odd)


def test_distortions():
    g = load_geometry("ds2")
    rng = np.random.default_rng(2)
    showers = rng.random((3, g.n_voxels))
    shifted = distortions.shift_radial(showers, g, 1).reshape(3, *g.shape)
    grid = showers.reshape(3, *g.shape)
    np.testing.assert_allclose(shifted.sum(axis=(2, 3)), grid.sum(axis=(2, 3)))  # energy stays in its layer
    np.testing.assert_array_equal(shifted[..., 0], 0)
    np.testing.assert_array_equal(shifted[..., 3], grid[..., 2])
    np.testing.assert_allclose(shifted[..., -1], grid[..., -2] + grid[..., -1])
    shuffled = distortions.shuffle_layers(showers, g, seed=0).reshape(3, *g.shape)
    assert not np.array_equal(shuffled, grid)
    np.testing.assert_allclose(np.sort(shuffled.sum(axis=(2, 3)), axis=1), np.sort(grid.sum(axis=(2, 3)), axis=1))
    np.testing.assert_allclose(distortions.scale_energy(showers, 1.05), 1.05 * showers)
    with pytest.raises(ValueError, match="regular geometry"):
        distortions.shift_radial(np.zeros((1, 368)), load_geometry("ds1-photons"))
