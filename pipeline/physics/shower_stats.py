"""Preprocessing statistics of a shower sample, computed in blocks and merged exactly.

Moments are kept as (count, mean, M2) and merged with Chan et al.'s pairwise update, so the
statistics of a store do not depend on block size as far as float64 rounding allows, and merging
per-shard results in shard order gives the same numbers whatever the number of ranks.

What is recorded is what the diffusion preprocessing (CaloScore-v2 style) standardises:
- ``log_energy``: log(E_inc / MeV); its min/max give the energy range;
- ``total_fraction``: E_tot / E_inc;
- ``layer_fraction`` and ``logit_layer_fraction``: E_layer / E_inc per layer, and its logit;
- ``logit_voxel_fraction``: logit of the voxel energy over its layer energy, zeros included,
  per (layer, radius) for ds2/ds3 (pooled over angle, which keeps rotation symmetry) and per
  voxel for ds1;
- ``zero_fraction``: fraction of empty voxels per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.physics.geometry import Geometry

#: logit(alpha + (1 - 2 alpha) x) keeps x = 0 and x = 1 finite
LOGIT_ALPHA = 1e-6


def logit_fraction(x: np.ndarray) -> np.ndarray:
    """logit(alpha + (1 - 2 alpha) x) for fractions x in [0, 1] (values outside are clipped)."""
    y = LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * np.clip(x, 0.0, 1.0)
    return np.log(y) - np.log1p(-y)


@dataclass
class Moments:
    """Count, mean, sum of squared deviations, min and max of a (possibly array-valued) quantity."""

    count: float
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, axis: int | tuple[int, ...] = 0) -> "Moments":
        """Moments of ``x`` reduced over ``axis`` (accumulated in float64)."""
        x = np.asarray(x)
        count = float(np.prod([x.shape[a] for a in np.atleast_1d(axis)]))
        mean = np.mean(x, axis=axis, dtype=np.float64)
        dev = x - np.expand_dims(mean, axis).astype(x.dtype)
        m2 = np.sum(np.square(dev, dtype=np.float64), axis=axis, dtype=np.float64)
        return cls(count, mean, m2, np.min(x, axis=axis).astype(np.float64), np.max(x, axis=axis).astype(np.float64))

    def merge(self, other: "Moments") -> "Moments":
        """Combine two disjoint samples (Chan, Golub and LeVeque)."""
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1.0))

    def to_dict(self) -> dict:
        """JSON form: nested lists of float64 (lossless through Python floats)."""
        return {
            "count": self.count, "mean": np.asarray(self.mean).tolist(), "std": np.asarray(self.std).tolist(),
            "m2": np.asarray(self.m2).tolist(), "min": np.asarray(self.min).tolist(), "max": np.asarray(self.max).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Moments":
        return cls(float(d["count"]), *(np.asarray(d[k], dtype=np.float64) for k in ("mean", "m2", "min", "max")))


STAT_NAMES = ("log_energy", "total_fraction", "layer_fraction", "logit_layer_fraction", "logit_voxel_fraction", "zero_fraction")


def block_stats(energies: np.ndarray, showers: np.ndarray, geometry: Geometry) -> dict[str, Moments]:
    """Statistics of one block: ``energies`` (n,) MeV, ``showers`` (n, *geometry.shape) MeV."""
    n = len(energies)
    flat = showers.reshape(n, -1)
    layers = geometry.layer_energies(flat)  # (n, L) float
    e = energies.reshape(n, 1)
    layer_frac = layers / e
    stats = {
        "log_energy": Moments.of(np.log(energies)),
        "total_fraction": Moments.of(layers.sum(axis=1) / energies),
        "layer_fraction": Moments.of(layer_frac),
        "logit_layer_fraction": Moments.of(logit_fraction(layer_frac)),
        "zero_fraction": Moments.of(_layer_zero_fraction(flat, geometry)),
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        if geometry.is_regular:
            x = showers / layers.reshape(n, -1, 1, 1).astype(showers.dtype)
            x = np.nan_to_num(x, nan=0.0, posinf=0.0)
            stats["logit_voxel_fraction"] = Moments.of(logit_fraction(x).transpose(0, 2, 1, 3), axis=(0, 1))
        else:
            denom = np.concatenate([np.repeat(layers[:, [i]], s.stop - s.start, axis=1)
                                    for i, s in enumerate(geometry.layer_slices) if s.stop > s.start], axis=1)
            x = np.nan_to_num(flat / denom, nan=0.0, posinf=0.0)
            stats["logit_voxel_fraction"] = Moments.of(logit_fraction(x))
    return stats


def _layer_zero_fraction(flat: np.ndarray, geometry: Geometry) -> np.ndarray:
    zero = flat == 0
    cols = [zero[:, s].mean(axis=1) if s.stop > s.start else np.ones(len(flat)) for s in geometry.layer_slices]
    return np.stack(cols, axis=1)


def merge_stats(parts: list[dict[str, Moments]]) -> dict[str, Moments]:
    """Merge per-block statistics in the given order."""
    if not parts:
        raise ValueError("no statistics to merge")
    merged = dict(parts[0])
    for part in parts[1:]:
        merged = {k: merged[k].merge(part[k]) for k in STAT_NAMES}
    return merged


def stats_to_dict(stats: dict[str, Moments]) -> dict:
    return {k: stats[k].to_dict() for k in STAT_NAMES}


def stats_from_dict(d: dict) -> dict[str, Moments]:
    return {k: Moments.from_dict(d[k]) for k in STAT_NAMES}
