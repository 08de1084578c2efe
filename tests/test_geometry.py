import numpy as np
import pytest

from pipeline.physics.geometry import GeometryError, load_geometry, parse_binning_xml


@pytest.mark.parametrize("name,voxels", [("ds1-photons", 368), ("ds1-pions", 533), ("ds2", 6480), ("ds3", 40500)])
def test_voxel_counts(name, voxels):
    assert load_geometry(name).n_voxels == voxels


def test_ds3_binning_facts():
    g = load_geometry("ds3")
    assert g.shape == (45, 50, 18) and g.is_regular
    edges = np.array(g.layers[0].r_edges)
    np.testing.assert_allclose(np.diff(edges), 2.325)
    assert edges[-1] == pytest.approx(41.85)
    assert g.layers[0].alpha_edges[0] == pytest.approx(-np.pi) and len(g.layers[0].alpha_edges) == 51
    assert g.threshold_mev == pytest.approx(0.5e-3 / 0.033)
    assert g.particle == "electron" and g.pid == 11


def test_ds2_binning_facts():
    g = load_geometry("ds2")
    assert g.shape == (45, 16, 9)
    np.testing.assert_allclose(np.diff(g.layers[10].r_edges), 4.65)


def test_ds1_is_flat_with_empty_layers():
    g = load_geometry("ds1-photons")
    assert not g.is_regular and g.shape == (368,)
    assert g.relevant_layers == [0, 1, 2, 3, 12]
    assert [g.layers[i].n_voxels for i in g.relevant_layers] == [8, 160, 190, 5, 5]
    assert g.threshold_mev == 1.0


def test_voxel_order_radius_fastest():
    g = load_geometry("ds3")
    flat = np.zeros((1, g.n_voxels))
    layer, alpha, r = 7, 3, 11
    flat[0, layer * 50 * 18 + alpha * 18 + r] = 1.0
    assert flat.reshape(1, *g.shape)[0, layer, alpha, r] == 1.0
    energies = g.layer_energies(flat)
    assert energies.shape == (1, 45) and energies[0, layer] == 1.0 and energies.sum() == 1.0


def test_layer_energies_match_reshape():
    g = load_geometry("ds2")
    x = np.random.default_rng(0).random((3, g.n_voxels))
    np.testing.assert_allclose(g.layer_energies(x), x.reshape(3, *g.shape).sum(axis=(2, 3)))
    with pytest.raises(GeometryError, match="6480"):
        g.layer_energies(x[:, :10])


def test_errors(tmp_path):
    with pytest.raises(GeometryError, match="unknown geometry 'ds4'"):
        load_geometry("ds4")
    bad = tmp_path / "bad.xml"
    bad.write_text("<Bins><Bin><Layer id='0' r_edges='0,2,1' n_bin_alpha='3'/></Bin></Bins>")
    with pytest.raises(GeometryError, match="bad.xml: layer 0: radial edges must increase"):
        parse_binning_xml(bad, "x", 0.0)
    bad.write_text("<Bins><Bin>")
    with pytest.raises(GeometryError, match="cannot read binning XML"):
        parse_binning_xml(bad, "x", 0.0)
