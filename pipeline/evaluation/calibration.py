"""Classifier scores: isotonic calibration (pool-adjacent-violators), AUC and the JSD estimate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

#: calibrated probabilities are clipped to [EPS, 1 - EPS] (as the challenge's IsotonicRegression)
EPS = 1e-6


@dataclass(frozen=True)
class Isotonic:
    """A non-decreasing step function fitted to (score, label) pairs, linear between its knots."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray) -> "Isotonic":
        ux, inverse = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
        weight = np.bincount(inverse).astype(np.float64)
        mean = np.bincount(inverse, weights=np.asarray(labels, dtype=np.float64)) / weight
        values, weights, sizes = [], [], []
        for v, w in zip(mean, weight):
            values.append(v)
            weights.append(w)
            sizes.append(1)
            while len(values) > 1 and values[-2] > values[-1]:  # pool adjacent violators
                w2, w1 = weights.pop(), weights[-1]
                v2 = values.pop()
                values[-1] = (values[-1] * w1 + v2 * w2) / (w1 + w2)
                weights[-1] = w1 + w2
                s2 = sizes.pop()
                sizes[-1] += s2
        fitted = np.repeat(np.asarray(values), sizes)
        return cls(ux, np.clip(fitted, EPS, 1 - EPS))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities; scores outside the fitted range take the end values."""
        return np.interp(np.asarray(scores, dtype=np.float64), self.x, self.y)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted one half)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_null_std(n_pos: int, n_neg: int) -> float:
    """Standard deviation of the AUC of a score unrelated to the labels: sqrt((n+ + n- + 1) / (12 n+ n-))."""
    return math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))


def binary_cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def jsd_estimate(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The challenge's JSD estimate from calibrated probabilities: (ln 2 - BCE) / ln 2 (0: no difference,
    1: perfectly separated; balanced classes)."""
    return (math.log(2.0) - binary_cross_entropy(probabilities, labels)) / math.log(2.0)
