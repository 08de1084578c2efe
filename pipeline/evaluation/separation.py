"""Histogram separation power with the binning fixed by the reference sample.

``S = 0.5 * sum_i (p_i - q_i)^2 / (p_i + q_i)`` over normalised bin contents p (generated) and
q (reference): 0 for identical histograms, 1 for disjoint ones (the challenge's
``_separation_power``, eq. 15 of arXiv:2009.03796 up to the factor 1/2).

Binning: ``n_bins`` equal bins between the reference's 0.1% and 99.9% quantiles (in log10 for
energy-like observables), plus an underflow and an overflow bin, so generated values outside
the reference range count against the generator instead of being dropped; log-scaled
observables put zeros (an empty layer) into a bin of their own.

Noise floor: for two finite samples of one distribution (N_p and N_q entries, k occupied bins)
``E[S] ~= (k - 1) / 4 * (1/N_p + 1/N_q)`` (each bin contributes (1 - q_i)(1/N_p + 1/N_q) / 2 to
the sum); :class:`Separation` reports it beside the value, so S / floor ~ 1 means "no difference
visible at this sample size".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

N_BINS = 50
QUANTILES = (0.001, 0.999)


@dataclass(frozen=True)
class Binning:
    """Inner bin edges fixed by the reference; ``log`` adds a leading bin for values <= 0."""

    edges: np.ndarray
    log: bool

    @property
    def n_bins(self) -> int:
        """All bins: [zero,] underflow, inner bins, overflow."""
        return len(self.edges) + 1 + int(self.log)

    def counts(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        parts = []
        if self.log:
            parts.append([np.count_nonzero(values <= 0)])
            values = values[values > 0]
        inner, _ = np.histogram(values, bins=self.edges)
        parts += [[np.count_nonzero(values < self.edges[0])], inner, [np.count_nonzero(values > self.edges[-1])]]
        return np.concatenate(parts).astype(np.int64)


def reference_binning(reference: np.ndarray, scale: str = "linear", n_bins: int = N_BINS) -> Binning:
    """Binning of one observable from its reference values (``scale``: "linear" or "log")."""
    ref = np.asarray(reference, dtype=np.float64)
    log = scale == "log"
    if log:
        ref = np.log10(ref[ref > 0])
    if ref.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = np.quantile(ref, QUANTILES)
        if hi <= lo:
            lo, hi = float(ref.min()), float(ref.max())
        if hi <= lo:
            half = 0.5 * max(abs(lo), 1.0) * (0.1 if log else 1.0)
            lo, hi = lo - half, hi + half
    edges = np.linspace(lo, hi, n_bins + 1)
    return Binning(10.0**edges if log else edges, log)


def separation_power(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """0.5 * sum((p - q)^2 / (p + q)) of the normalised histograms (nan if one is empty)."""
    p, q = np.asarray(p_counts, dtype=np.float64), np.asarray(q_counts, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    s = p + q
    nz = s > 0
    return float(0.5 * np.sum((p[nz] - q[nz]) ** 2 / s[nz]))


def noise_floor(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Expected separation power of two samples of one distribution with these sizes and bins."""
    n_p, n_q = float(np.sum(p_counts)), float(np.sum(q_counts))
    if n_p <= 0 or n_q <= 0:
        return float("nan")
    occupied = int(np.count_nonzero(np.asarray(p_counts) + np.asarray(q_counts)))
    return 0.25 * max(occupied - 1, 0) * (1.0 / n_p + 1.0 / n_q)


@dataclass(frozen=True)
class Separation:
    """Separation power of one observable with its noise floor and histograms."""

    value: float
    floor: float
    generated: np.ndarray
    reference: np.ndarray
    binning: Binning

    def to_dict(self, histograms: bool = False) -> dict[str, Any]:
        """Value, floor and sizes; with ``histograms`` also the inner bin edges and all counts
        (order: [zero bin if log,] underflow, inner bins, overflow)."""
        out: dict[str, Any] = {"value": self.value, "floor": self.floor, "n_generated": int(self.generated.sum()),
                               "n_reference": int(self.reference.sum())}
        if histograms:
            out |= {"edges": self.binning.edges.tolist(), "log": self.binning.log,
                    "generated_counts": self.generated.tolist(), "reference_counts": self.reference.tolist()}
        return out


def compare(generated: np.ndarray, reference: np.ndarray, scale: str = "linear", n_bins: int = N_BINS,
            binning: Binning | None = None) -> Separation:
    """Separation power of ``generated`` against ``reference`` in the reference's binning."""
    binning = binning or reference_binning(reference, scale, n_bins)
    p, q = binning.counts(generated), binning.counts(reference)
    return Separation(separation_power(p, q), noise_floor(p, q), p, q, binning)


def grouped_noise_floor(p_groups: np.ndarray, q_groups: np.ndarray) -> float:
    """Noise floor for histograms whose entries are not independent (voxels of one shower), from
    counts per group of showers ``(groups, bins)``: Var(p_i) = G Var_g(c_gi - p_i T_g) / T^2 (ratio
    estimator), floor = 0.5 sum_i (Var(p_i) + Var(q_i)) / (p_i + q_i)."""
    if min(len(p_groups), len(q_groups)) < 2:
        return noise_floor(p_groups.sum(axis=0), q_groups.sum(axis=0))

    def fraction_and_variance(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        groups = groups.astype(np.float64)
        t = groups.sum(axis=1)
        frac = groups.sum(axis=0) / max(t.sum(), 1.0)
        resid = groups - np.outer(t, frac)
        return frac, len(groups) * resid.var(axis=0, ddof=1) / max(t.sum(), 1.0) ** 2

    (p, vp), (q, vq) = fraction_and_variance(p_groups), fraction_and_variance(q_groups)
    nz = (p + q) > 0
    return float(0.5 * np.sum((vp + vq)[nz] / (p + q)[nz]))


def compare_grouped_counts(generated: np.ndarray, reference: np.ndarray, edges: np.ndarray,
                           n_bins: int = N_BINS) -> Separation:
    """Separation of two histograms on one fine grid (``edges``), given as counts per group of showers
    ``(groups, fine bins)``: rebinned to at most ``n_bins`` bins over the reference's occupied range
    plus under- and overflow (the voxel spectrum); floor from :func:`grouped_noise_floor`."""
    gen_g, ref_g = np.atleast_2d(generated), np.atleast_2d(reference)
    ref_total = ref_g.sum(axis=0)
    occupied = np.flatnonzero(ref_total)
    if occupied.size == 0:
        return Separation(float("nan"), float("nan"), gen_g.sum(axis=0), ref_total, Binning(edges[:2], False))
    lo, hi = occupied[0], occupied[-1] + 1
    starts = np.array([g[0] for g in np.array_split(np.arange(lo, hi), min(n_bins, hi - lo))])
    inner_edges = np.append(edges[starts], edges[hi])

    def merge(c: np.ndarray) -> np.ndarray:
        return np.concatenate([c[:, :lo].sum(axis=1, keepdims=True), np.add.reduceat(c[:, lo:hi], starts - lo, axis=1),
                               c[:, hi:].sum(axis=1, keepdims=True)], axis=1)

    p_g, q_g = merge(gen_g), merge(ref_g)
    p, q = p_g.sum(axis=0), q_g.sum(axis=0)
    return Separation(separation_power(p, q), grouped_noise_floor(p_g, q_g), p, q, Binning(inner_edges, False))


def family_summary(results: dict[str, Separation], family: str) -> dict[str, float | str]:
    """Mean and max separation power (and mean floor) over the observables of one family."""
    items = {k: v for k, v in results.items() if k.startswith(family + "_")}
    if not items:
        return {}
    values = np.array([v.value for v in items.values()])
    floors = np.array([v.floor for v in items.values()])
    worst = max(items, key=lambda k: -np.inf if np.isnan(items[k].value) else items[k].value)
    return {"mean": float(np.nanmean(values)), "max": float(np.nanmax(values)), "max_at": worst,
            "floor_mean": float(np.nanmean(floors)), "n": len(items)}
