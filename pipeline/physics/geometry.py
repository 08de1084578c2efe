"""Calorimeter geometry read from the CaloChallenge binning XML files.

Voxel order is (layer, angle, radius) with the radial index fastest, so for ds2/ds3
``showers.reshape(N, L, A, R)`` is the natural view. ds1 layers differ in their
binning (some are empty), so ds1 stays flat ``(N, V)``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

BINNING_DIR = Path(__file__).resolve().parents[2] / "configs" / "binning"  # <repo>/configs/binning

#: geometry name -> binning XML file shipped in ``configs/binning``
GEOMETRY_FILES: dict[str, str] = {
    "ds1-photons": "binning_dataset_1_photons.xml",
    "ds1-pions": "binning_dataset_1_pions.xml",
    "ds2": "binning_dataset_2.xml",
    "ds3": "binning_dataset_3.xml",
}

#: Voxel threshold (MeV) that the CaloChallenge evaluation applies: 0.5 keV in Si / 0.033 for
#: ds2/ds3, 1 MeV for ds1.
THRESHOLDS_MEV: dict[str, float] = {
    "ds1-photons": 1.0,
    "ds1-pions": 1.0,
    "ds2": 0.5e-3 / 0.033,
    "ds3": 0.5e-3 / 0.033,
}


class GeometryError(ValueError):
    """A binning file or geometry name that cannot be used."""


@dataclass(frozen=True)
class Layer:
    """One longitudinal layer: radial bin edges (mm) and the number of angular bins."""

    r_edges: tuple[float, ...]
    n_alpha: int

    @property
    def n_radial(self) -> int:
        return len(self.r_edges) - 1

    @property
    def n_voxels(self) -> int:
        return self.n_radial * self.n_alpha if self.n_radial > 0 else 0

    @property
    def alpha_edges(self) -> np.ndarray:
        """Angular bin edges in radians: bin j covers [-pi + 2 pi j/A, -pi + 2 pi (j+1)/A)."""
        return np.linspace(-math.pi, math.pi, self.n_alpha + 1)


@dataclass(frozen=True)
class Geometry:
    """Binning of one CaloChallenge dataset."""

    name: str
    particle: str
    pid: int
    layers: tuple[Layer, ...]
    threshold_mev: float

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_voxels(self) -> int:
        return sum(layer.n_voxels for layer in self.layers)

    @property
    def is_regular(self) -> bool:
        """True when every layer has the same binning (ds2, ds3): showers reshape to (L, A, R)."""
        first = self.layers[0]
        return first.n_voxels > 0 and all(layer == first for layer in self.layers)

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-shower array shape: (L, A, R) for regular geometries, (V,) otherwise."""
        if self.is_regular:
            first = self.layers[0]
            return (self.n_layers, first.n_alpha, first.n_radial)
        return (self.n_voxels,)

    @property
    def layer_slices(self) -> list[slice]:
        """Slice of the flat voxel vector belonging to each layer (empty for empty layers)."""
        bounds = np.concatenate([[0], np.cumsum([layer.n_voxels for layer in self.layers])])
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    @property
    def relevant_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer.n_voxels > 0]

    def layer_energies(self, showers: np.ndarray) -> np.ndarray:
        """Sum flat ``(N, V)`` showers per layer -> ``(N, n_layers)``."""
        showers = np.asarray(showers)
        if showers.ndim != 2 or showers.shape[1] != self.n_voxels:
            raise GeometryError(f"expected showers of shape (N, {self.n_voxels}) for {self.name}, got {showers.shape}")
        return np.stack([showers[:, s].sum(axis=1) for s in self.layer_slices], axis=1)

    def to_dict(self) -> dict:
        """JSON-serialisable summary stored in zarr attrs."""
        return {
            "name": self.name,
            "particle": self.particle,
            "pid": self.pid,
            "n_layers": self.n_layers,
            "n_voxels": self.n_voxels,
            "shape": list(self.shape),
            "threshold_mev": self.threshold_mev,
            "voxel_order": "layer, angle, radius (radius fastest)",
        }


def parse_binning_xml(path: str | Path, name: str, threshold_mev: float) -> Geometry:
    """Parse a CaloChallenge binning XML file into a :class:`Geometry`."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise GeometryError(f"{path}: cannot read binning XML: {err}") from err
    bins = root.findall("Bin")
    if len(bins) != 1:
        raise GeometryError(f"{path}: expected exactly one <Bin> element, found {len(bins)}")
    bin_el = bins[0]
    layers = []
    for i, el in enumerate(bin_el.findall("Layer")):
        try:
            edges = tuple(float(x) for x in el.attrib["r_edges"].split(","))
            n_alpha = int(el.attrib["n_bin_alpha"])
        except (KeyError, ValueError) as err:
            raise GeometryError(f"{path}: layer {i}: bad r_edges/n_bin_alpha attribute: {err}") from err
        if int(el.attrib.get("id", i)) != i:
            raise GeometryError(f"{path}: layers must be listed in order; found id {el.attrib['id']} at position {i}")
        if any(b <= a for a, b in zip(edges[:-1], edges[1:])) or n_alpha < 1:
            raise GeometryError(f"{path}: layer {i}: radial edges must increase and n_bin_alpha be >= 1")
        layers.append(Layer(edges, n_alpha))
    if not layers:
        raise GeometryError(f"{path}: no <Layer> elements")
    return Geometry(name, bin_el.attrib.get("name", ""), int(bin_el.attrib.get("pid", 0)), tuple(layers), threshold_mev)


@lru_cache(maxsize=None)
def load_geometry(name: str) -> Geometry:
    """Geometry by name: one of ``ds1-photons``, ``ds1-pions``, ``ds2``, ``ds3``."""
    if name not in GEOMETRY_FILES:
        raise GeometryError(f"unknown geometry {name!r}; expected one of {sorted(GEOMETRY_FILES)}")
    return parse_binning_xml(BINNING_DIR / GEOMETRY_FILES[name], name, THRESHOLDS_MEV[name])
