"""Trust in the metrics: two simulator seeds look alike, each deliberate distortion is seen by the
metric that should see it (and not by those that should not).

Bounds:
- Separation power: for two samples of one distribution S / floor ~ chi2_{k-1} / (k-1) (floor from
  :func:`pipeline.evaluation.separation.noise_floor`, k ~ 50 bins, spread ~0.2); a family's mean
  over 45 layers must stay below 1.3, any single observable below 2.5. A distortion must push the
  observable that it changes above 5 x floor (10 x for the total-energy response).
- Classifier AUC: a classifier that learnt nothing has a Mann-Whitney distributed AUC on the
  held-out test split (m showers per class): mean 0.5, sigma_0 = sqrt((2m + 1) / (12 m^2)); the
  test allows |AUC - 0.5| < 4 sigma_0 (false alarm 6e-5; the seeds are fixed anyway). m = 320
  here (1600 showers per sample, 20% test split): 4 sigma_0 = 0.091. A distortion must give
  AUC > 0.5 + 4 sigma_0.
"""

import numpy as np
import pytest
import torch

from data_tools.shower_model import sample_incident_energies, simulate_showers
from pipeline.data.samples import ArraySample
from pipeline.evaluation import distortions
from pipeline.evaluation.classifier import (
    ClassifierConfig,
    DenseFeatures,
    LowLevelFeatures,
    classifier_test,
)
from pipeline.evaluation.observables import FAMILIES, compute_observables, voxel_log_edges
from pipeline.evaluation.physics_distance import fpd, kpd
from pipeline.evaluation.runner import separations, summarise
from pipeline.evaluation.separation import compare_grouped_counts
from pipeline.physics.geometry import load_geometry

N = 1600
CLS = ClassifierConfig.quick(max_epochs=15)


def _pair(geometry: str, n: int, rows: np.ndarray | None = None, names: tuple[str, ...] | None = None):
    g = load_geometry(geometry)
    e1, e2 = sample_incident_energies(n, 1), sample_incident_energies(n, 2)
    ref, other = simulate_showers(g, e1, seed=1), simulate_showers(g, e2, seed=2)
    samples = {
        "independent": other,
        "energy x1.05": distortions.scale_energy(other, 1.05),
        "radial shift": distortions.shift_radial(other, g, 1),
        "layers shuffled": distortions.shuffle_layers(other, g, seed=0),
    }
    ref_obs = compute_observables(ArraySample(ref, e1, g, "reference"), low_level_rows=rows)
    return g, ref_obs, {k: compute_observables(ArraySample(s, e2, g, k), low_level_rows=rows) for k, s in samples.items()
                        if names is None or k in names}


@pytest.fixture(scope="module")
def ds3():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _pair("ds3", N)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ds3_separations(ds3):
    _, ref, gens = ds3
    out = {}
    for name, gen in gens.items():
        seps = separations(gen, ref, 50)
        seps["voxel"] = compare_grouped_counts(gen.voxel_groups, ref.voxel_groups, voxel_log_edges())
        out[name] = (seps, summarise(seps))
    return out


def _ratio(summary: dict, key: str) -> float:
    s = summary[key]
    return s["value"] / s["floor"] if "value" in s else s["mean"] / s["floor_mean"]


def test_independent_sample_sits_on_the_noise_floor(ds3_separations):
    seps, summary = ds3_separations["independent"]
    worst = max(seps, key=lambda k: seps[k].value / seps[k].floor)
    assert seps[worst].value / seps[worst].floor < 2.5, worst
    for family in FAMILIES:
        assert _ratio(summary, family) < 1.3, family
    assert _ratio(summary, "etot_einc") < 2.5 and _ratio(summary, "voxel") < 2.5


def test_each_distortion_is_seen_where_it_should_be(ds3_separations):
    energy = ds3_separations["energy x1.05"][1]
    assert _ratio(energy, "etot_einc") > 10 and _ratio(energy, "voxel") > 3
    assert _ratio(energy, "width_x") < 1.3 and _ratio(energy, "sparsity") < 1.3  # shapes untouched
    radial = ds3_separations["radial shift"][1]
    assert _ratio(radial, "width_x") > 5 and _ratio(radial, "width_y") > 5
    assert _ratio(radial, "etot_einc") < 2.5 and _ratio(radial, "e_layer") < 1.3  # energy kept in its layer
    layers = ds3_separations["layers shuffled"][1]
    assert _ratio(layers, "e_layer") > 5 and _ratio(layers, "sparsity") > 5
    assert _ratio(layers, "etot_einc") < 2.5 and _ratio(layers, "voxel") < 2.5  # same voxels, other layers


def _bound(result: dict) -> float:
    return 4 * result["auc_null_std"]


def test_high_level_classifier(ds3):
    _, ref, gens = ds3
    auc = {}
    for name in ("independent", "radial shift", "layers shuffled"):
        res = classifier_test(DenseFeatures(gens[name].hlf.classifier_features()),
                              DenseFeatures(ref.hlf.classifier_features()), CLS)
        assert res["runs"][0]["n_test"] == 2 * 320 and 0.09 < _bound(res) < 0.092
        auc[name] = res["auc"]
        if name == "independent":
            assert abs(res["auc"] - 0.5) < _bound(res), res["auc"]
            assert abs(res["jsd"]) < 0.1
        else:
            assert res["auc"] > 0.5 + _bound(res), (name, res["auc"])
    assert auc["layers shuffled"] > 0.9 and auc["radial shift"] > 0.9


def test_physics_distances(ds3):
    _, ref, gens = ds3
    x_ref = ref.hlf.classifier_features()
    f, k = {}, {}
    for name in ("independent", "radial shift", "layers shuffled"):
        x = gens[name].hlf.classifier_features()
        f[name] = fpd(x_ref, x, batches=4, points=5)
        k[name] = kpd(x_ref, x, batch_size=1000, batches=6)
    ind = f["independent"]
    for name in ("radial shift", "layers shuffled"):
        assert f[name]["value"] > 10 * ind["value"] and f[name]["value"] - ind["value"] > 5 * (f[name]["error"] + ind["error"])
        assert k[name]["value"] > 5 * k[name]["error"]
    assert abs(k["independent"]["value"]) < 3 * k["independent"]["error"] + 1e-3
    assert k["radial shift"]["value"] > 50 * abs(k["independent"]["value"])


def test_low_level_classifier_on_voxels(one_torch_thread):
    """Voxel classifier on ds2 (6480 voxels keep it fast): blind to a second seed, sees the radial shift."""
    rows = np.arange(1000)
    _, ref, gens = _pair("ds2", 1500, rows, ("independent", "radial shift"))
    ref_x = LowLevelFeatures(ref.low_level, ref.low_level_energies)
    for name in ("independent", "radial shift"):
        res = classifier_test(LowLevelFeatures(gens[name].low_level, gens[name].low_level_energies), ref_x,
                              ClassifierConfig.quick(max_epochs=8))
        assert res["n_features"] == 6481 and res["runs"][0]["n_test"] == 400
        if name == "independent":
            assert abs(res["auc"] - 0.5) < _bound(res), res["auc"]
        else:
            assert res["auc"] > 0.5 + _bound(res) and res["auc"] > 0.9, res["auc"]
