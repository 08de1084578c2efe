"""Deliberate distortions of known size, to measure what each metric can see (the sensitivity calibration).

All take flat ``(n, V)`` showers in MeV of a regular geometry (ds2, ds3) and return a new array. Each
family has a strength (a fraction or a relative change) so a metric's value can be read as "what an
x % distortion of this kind gives". :class:`DistortedSample` applies one to a sample as it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.data.samples import Sample
from pipeline.physics.geometry import Geometry

#: a distortion: (showers (n, V) float64, index of the first row, geometry) -> distorted showers
Distortion = Callable[[np.ndarray, int, Geometry], np.ndarray]


def _grid(showers: np.ndarray, geometry: Geometry) -> np.ndarray:
    if not geometry.is_regular:
        raise ValueError(f"distortions need a regular geometry (ds2, ds3), not {geometry.name!r}")
    return np.asarray(showers).reshape(-1, *geometry.shape)


def scale_energy(showers: np.ndarray, factor: float = 1.05) -> np.ndarray:
    """Every voxel energy times ``factor`` (a miscalibrated response)."""
    return np.asarray(showers) * factor


def scale_layers(showers: np.ndarray, geometry: Geometry, layers: slice, factor: float) -> np.ndarray:
    """The voxel energies of the layers ``layers`` times ``factor`` (one miscalibrated layer group)."""
    grid = _grid(showers, geometry).copy()
    grid[:, layers] *= factor
    return grid.reshape(len(grid), -1)


def shift_radial(showers: np.ndarray, geometry: Geometry, bins: int = 1) -> np.ndarray:
    """Showers moved ``bins`` radial bins outwards; energy pushed past the last bin stays in it (E_tot kept)."""
    grid = _grid(showers, geometry)
    out = np.zeros_like(grid)
    out[..., bins:] = grid[..., :-bins]
    out[..., -1] += grid[..., -bins:].sum(axis=-1)
    return out.reshape(len(grid), -1)


def shuffle_layers(showers: np.ndarray, geometry: Geometry, seed: int = 0) -> np.ndarray:
    """Layers permuted by a fixed random permutation (a wrong longitudinal development)."""
    grid = _grid(showers, geometry)
    order = np.random.default_rng(seed).permutation(grid.shape[1])
    return grid[:, order].reshape(len(grid), -1)


def _move_outwards(grid: np.ndarray, fraction: float, axis: int) -> np.ndarray:
    """A ``fraction`` of every bin's content moved to the next bin along ``axis`` (the last bin keeps its own)."""
    n = grid.shape[axis]
    source = [slice(None)] * grid.ndim
    target = [slice(None)] * grid.ndim
    source[axis], target[axis] = slice(0, n - 1), slice(1, n)
    moved = fraction * grid[tuple(source)]
    out = grid.copy()
    out[tuple(source)] -= moved
    out[tuple(target)] += moved
    return out


def smear_radial(showers: np.ndarray, geometry: Geometry, fraction: float) -> np.ndarray:
    """A ``fraction`` of every voxel's energy moved one radial bin outwards (the last bin keeps its own):
    showers wider by a known amount, E_tot and the layer energies unchanged."""
    grid = _grid(showers, geometry)
    return _move_outwards(grid, fraction, axis=3).reshape(len(grid), -1)


def shift_longitudinal(showers: np.ndarray, geometry: Geometry, fraction: float) -> np.ndarray:
    """A ``fraction`` of every voxel's energy moved to the same voxel one layer deeper (the last layer keeps its
    own): a shower maximum shifted by a known amount, E_tot unchanged."""
    grid = _grid(showers, geometry)
    return _move_outwards(grid, fraction, axis=1).reshape(len(grid), -1)


def drop_near_threshold(showers: np.ndarray, geometry: Geometry, factor: float = 2.0) -> np.ndarray:
    """Voxels between the readout threshold and ``factor`` times it set to zero (a higher effective threshold)."""
    s = np.asarray(showers).copy()
    s[(s >= geometry.threshold_mev) & (s < factor * geometry.threshold_mev)] = 0.0
    return s


def add_noise_hits(showers: np.ndarray, geometry: Geometry, fraction: float, first_row: int, seed: int = 0,
                   max_factor: float = 10.0) -> np.ndarray:
    """A ``fraction`` of all voxels gets an extra hit, log-uniform between the threshold and ``max_factor`` times
    it (sparse noise); which voxels and how much depend only on ``(seed, row index)``."""
    s = np.asarray(showers).copy()
    lo = np.log(geometry.threshold_mev)
    for i in range(len(s)):
        rng = np.random.default_rng([seed, first_row + i, 0x4015E])
        hit = rng.random(s.shape[1]) < fraction
        s[i, hit] += np.exp(lo + np.log(max_factor) * rng.random(int(hit.sum())))
    return s


@dataclass(frozen=True)
class DistortionCase:
    """One distortion of one strength: ``family`` (what is distorted), ``strength`` (in ``unit``)."""

    family: str
    strength: float
    unit: str
    apply: Distortion

    @property
    def name(self) -> str:
        return f"{self.family} {self.strength:g}{self.unit}"


UNDISTORTED = "undistorted"  # the family of the strength-0 case


def sensitivity_cases(geometry: Geometry) -> list[DistortionCase]:
    """The distortion families and strengths of the sensitivity benchmark, weakest first within a family."""
    third = slice(0, len(geometry.layers) // 3)  # the front third of the layers (before the shower maximum)
    # the sample the distortions are applied to, as simulated: where a metric already stands out from the null
    # without any distortion, its detections below are not to be trusted
    cases = [DistortionCase(UNDISTORTED, 0, "", lambda s, a, g: s)]
    cases += [DistortionCase("radial smear", p, " %", lambda s, a, g, p=p: smear_radial(s, g, p / 100))
              for p in (1, 2, 5, 10, 15)]
    cases += [DistortionCase("energy scale", p, " %", lambda s, a, g, p=p: scale_energy(s, 1 + p / 100))
              for p in (0.5, 1, 2, 5)]
    cases += [DistortionCase("front-layer scale", p, " %", lambda s, a, g, p=p: scale_layers(s, g, third, 1 + p / 100))
              for p in (2, 5, 10)]
    cases += [DistortionCase("longitudinal shift", p, " %", lambda s, a, g, p=p: shift_longitudinal(s, g, p / 100))
              for p in (1, 2, 5)]
    cases += [DistortionCase("threshold", f, "x", lambda s, a, g, f=f: drop_near_threshold(s, g, f)) for f in (1.5, 3)]
    cases += [DistortionCase("noise hits", p, " %", lambda s, a, g, p=p: add_noise_hits(s, g, p / 100, a))
              for p in (0.1, 1)]
    return cases


class DistortedSample(Sample):
    """Another sample with a distortion applied to its raw rows as they are read."""

    def __init__(self, base: Sample, fn: Distortion, label: str) -> None:
        super().__init__(f"{base.name} ({label})", base.geometry, base.n)
        self.base, self.fn = base, fn
        self.kind = f"{base.kind}, distorted: {label}"

    def _raw_energies(self) -> np.ndarray:
        return self.base.energies

    def _row_alignment(self) -> int:
        return self.base._row_alignment()

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.fn(np.asarray(self.base._read(start, stop), dtype=np.float64), start, self.geometry)

    def close(self) -> None:
        self.base.close()
