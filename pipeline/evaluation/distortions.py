"""Deliberate distortions of a shower sample, to check that each metric sees what it should.

All take flat ``(n, V)`` showers of a regular geometry (ds2, ds3) and return a new array.
"""

from __future__ import annotations

import numpy as np

from pipeline.physics.geometry import Geometry


def _grid(showers: np.ndarray, geometry: Geometry) -> np.ndarray:
    if not geometry.is_regular:
        raise ValueError(f"distortions need a regular geometry (ds2, ds3), not {geometry.name!r}")
    return np.asarray(showers).reshape(-1, *geometry.shape)


def scale_energy(showers: np.ndarray, factor: float = 1.05) -> np.ndarray:
    """Every voxel energy times ``factor`` (a miscalibrated response)."""
    return np.asarray(showers) * factor


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
