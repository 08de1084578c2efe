"""Unit tests of the evaluation metrics: separation power, calibration/AUC, FPD/KPD, sparse rows."""

import math

import numpy as np
import pytest
from scipy import linalg

from pipeline.evaluation.calibration import Isotonic, auc, auc_null_std, jsd_estimate
from pipeline.evaluation.physics_distance import (
    fpd,
    frechet_distance,
    kpd,
    mmd2_unbiased,
    normalise,
)
from pipeline.evaluation.separation import (
    compare,
    compare_grouped_counts,
    grouped_noise_floor,
    noise_floor,
    reference_binning,
    separation_power,
)
from pipeline.evaluation.sparse_rows import SparseRows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_separation_power_limits_and_value():
    assert separation_power([1, 2, 3], [2, 4, 6]) == 0.0
    assert separation_power([5, 0], [0, 7]) == pytest.approx(1.0)
    # p = (0.5, 0.5), q = (1, 0): 0.5 * (0.25/1.5 + 0.25/0.5) = 1/3
    assert separation_power([1, 1], [1, 0]) == pytest.approx(1 / 3)
    assert math.isnan(separation_power([0, 0], [1, 1]))


def test_reference_binning_overflow_and_zero_bin():
    ref = np.linspace(0, 1, 1001)
    b = reference_binning(ref, "linear", 10)
    assert b.n_bins == 12 and b.edges[0] == pytest.approx(0.001) and b.edges[-1] == pytest.approx(0.999)
    counts = b.counts(np.array([-5.0, 0.5, 7.0, 7.0]))
    assert counts[0] == 1 and counts[-1] == 2 and counts.sum() == 4
    log = reference_binning(np.array([0.0, 1.0, 10.0, 100.0]), "log", 4)
    assert log.log and log.n_bins == 7
    assert log.counts(np.array([0.0, 0.0, 10.0]))[0] == 2  # zeros (empty layers) have their own bin
    constant = reference_binning(np.full(10, 3.0), "linear", 5)  # degenerate reference: still a binning
    assert constant.counts(np.full(4, 3.0))[1:-1].sum() == 4


def test_noise_floor_predicts_separation_of_identical_distributions():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20000)
    values, floors = [], []
    for _ in range(200):
        s = compare(rng.normal(size=800), rng.normal(size=1200), binning=reference_binning(ref, "linear", 30))
        values.append(s.value)
        floors.append(s.floor)
    assert np.mean(values) == pytest.approx(np.mean(floors), rel=0.1)
    assert floors[0] == pytest.approx(0.25 * 31 * (1 / 800 + 1 / 1200), rel=0.1)


def test_grouped_floor_sees_correlated_entries():
    rng = np.random.default_rng(1)
    k = 20
    independent = rng.multinomial(50, np.full(k, 1 / k), size=(2, 400))
    assert grouped_noise_floor(independent[0], independent[1]) == pytest.approx(
        noise_floor(independent[0].sum(0), independent[1].sum(0)), rel=0.15)
    # every entry counted 10 times: the same fractions and the same noise, but 10 x more entries, so the
    # multinomial floor (independent entries) would claim 10 x less noise
    tenfold = (10 * independent[0], 10 * independent[1])
    assert grouped_noise_floor(*tenfold) == pytest.approx(grouped_noise_floor(*independent), rel=1e-9)
    assert noise_floor(tenfold[0].sum(0), tenfold[1].sum(0)) == pytest.approx(
        noise_floor(independent[0].sum(0), independent[1].sum(0)) / 10)
    edges = np.arange(k + 1.0)
    sep = compare_grouped_counts(independent[0], independent[1], edges, n_bins=5)
    assert sep.generated.size == 7 and sep.generated.sum() == independent[0].sum()


def test_auc_matches_pair_counting_and_null_spread():
    rng = np.random.default_rng(2)
    scores, labels = rng.normal(size=300).round(1), rng.integers(0, 2, 300)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc(scores, labels) == pytest.approx(pairs)
    aucs = [auc(rng.normal(size=400), np.repeat([0, 1], 200)) for _ in range(400)]
    assert np.std(aucs) == pytest.approx(auc_null_std(200, 200), rel=0.15)


def test_isotonic_calibration():
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    y = np.array([0, 1, 0, 0, 1, 1])
    iso = Isotonic.fit(x, y)
    assert np.all(np.diff(iso.y) >= 0)
    np.testing.assert_allclose(iso(x), [1e-6, 1 / 3, 1 / 3, 1 / 3, 1 - 1e-6, 1 - 1e-6], atol=1e-9)
    assert iso(np.array([-1.0, 2.0])).tolist() == [iso.y[0], iso.y[-1]]
    labels = np.repeat([0, 1], 50)
    assert jsd_estimate(np.full(100, 0.5), labels) == pytest.approx(0.0)
    assert jsd_estimate(labels.astype(float), labels) == pytest.approx(1.0, abs=1e-5)


def test_frechet_distance_against_closed_forms():
    assert frechet_distance(np.zeros(1), np.eye(1), np.array([3.0]), np.eye(1)) == pytest.approx(9.0)
    assert frechet_distance(np.zeros(1), np.eye(1), np.zeros(1), 4 * np.eye(1)) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + np.eye(6), b @ b.T + np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_fpd_and_kpd_on_gaussians():
    rng = np.random.default_rng(4)
    ref, same = rng.normal(size=(6000, 4)), rng.normal(size=(6000, 4))
    shifted = rng.normal(size=(6000, 4)) + np.array([0.5, 0, 0, 0])
    kw = dict(min_n=1000, max_n=3000, batches=5, points=5)
    f_same, f_shift = fpd(ref, same, **kw), fpd(ref, shifted, **kw)
    assert f_same["value"] < 0.01
    assert f_shift["value"] == pytest.approx(0.25, abs=0.05)  # |mu shift|^2 in units of the reference std
    k_same, k_shift = kpd(ref, same, batch_size=2000, batches=6), kpd(ref, shifted, batch_size=2000, batches=6)
    assert abs(k_same["value"]) < 3 * k_same["error"] + 1e-3
    assert k_shift["value"] > 3 * k_shift["error"] and k_shift["value"] > 20 * abs(k_same["value"])


def test_mmd_is_the_unbiased_estimator_and_normalisation():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 1
    k = lambda a, b: (a @ b.T / 3 + 1) ** 3  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    ref = ((kxx.sum() - np.trace(kxx)) / 42 + (kyy.sum() - np.trace(kyy)) / 72 - 2 * k(x, y).mean())
    assert mmd2_unbiased(x, y, 3) == pytest.approx(ref)
    r, g = normalise(x * 5 + 2, y, "standardise")
    np.testing.assert_allclose(r.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(r.std(0), 1)
    r, _ = normalise(x, y, "maxabs")
    assert np.abs(r).max() == pytest.approx(1.0)


def test_sparse_rows_round_trip():
    rng = np.random.default_rng(6)
    dense = rng.random((30, 700)).astype(np.float32)
    dense[dense < 0.8] = 0
    dense[3] = 0  # an empty row
    parts = [SparseRows.from_dense(dense[:10]), SparseRows.from_dense(dense[10:])]
    rows = SparseRows.concatenate(parts, 700)
    assert len(rows) == 30 and rows.indices.dtype == np.uint16
    order = rng.permutation(30)
    np.testing.assert_array_equal(rows.dense(order), dense[order])
    assert rows.nbytes < dense.nbytes / 2
