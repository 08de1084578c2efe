"""The project's zarr v3 shower store: layout, creation and read access.

Layout of a store directory::

    showers            (N, L, A, R) float32 for ds2/ds3, (N, V) for ds1; sharded, compressed
    incident_energies  (N,) float64, MeV; one chunk per shower shard
    attrs              format, format_version, geometry, units, sources, layout, split,
                       stats (preprocessing statistics), complete (written last)

A writer always owns whole shards (``shard_rows`` showers); readers read whole inner chunks
(``chunk_rows`` showers). The train/validation split is by chunk, so every chunk belongs to one
split and rank-sharded streaming reads whole chunks only.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs

from pipeline.config import StoreLayout
from pipeline.physics.geometry import GEOMETRY_FILES, Geometry, GeometryError, load_geometry

FORMAT_NAME = "calo-shower-store"
FORMAT_VERSION = 1
SHOWERS = "showers"
ENERGIES = "incident_energies"

class StoreError(ValueError):
    """A store that is missing, incomplete or not in this project's format."""


def zarr_compressors(layout: StoreLayout) -> list:
    """The zarr v3 codec of a :class:`StoreLayout`."""
    if layout.codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=layout.level)]
    if layout.codec == "gzip":
        return [zarr.codecs.GzipCodec(level=min(layout.level, 9))]
    _, cname, shuffle = layout.codec.split("-")
    return [zarr.codecs.BloscCodec(cname=cname, clevel=min(layout.level, 9), shuffle=shuffle, typesize=4)]


def chunk_bounds(n: int, rows: int) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of consecutive blocks of ``rows`` covering ``n`` rows."""
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def validation_chunks(n_chunks: int, fraction: float, seed: int) -> list[int]:
    """Chunk indices held out for validation: a seeded random subset, at least one if fraction > 0."""
    if fraction <= 0 or n_chunks < 2:
        return []
    n_val = min(n_chunks - 1, max(1, round(fraction * n_chunks)))
    rng = np.random.default_rng([seed, 7331])
    return sorted(int(i) for i in rng.permutation(n_chunks)[:n_val])


def create_arrays(path: Path, geometry: Geometry, n: int, layout: StoreLayout, attrs: dict) -> zarr.Group:
    """Create an empty store (no data written) whose attrs say it is incomplete."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    shape = geometry.shape
    group.create_array(
        SHOWERS,
        shape=(n, *shape),
        dtype="float32",
        chunks=(layout.chunk_rows, *shape),
        shards=(layout.shard_rows, *shape),
        compressors=zarr_compressors(layout),
        fill_value=0.0,
        dimension_names=("shower", "layer", "angle", "radius") if len(shape) == 3 else ("shower", "voxel"),
    )
    group.create_array(
        ENERGIES, shape=(n,), dtype="float64", chunks=(layout.shard_rows,),
        compressors=[zarr.codecs.ZstdCodec(level=3)], fill_value=0.0, dimension_names=("shower",),
    )
    group.attrs.update({**attrs, "complete": False})
    return group


class ShowerStore:
    """Read access to a converted store. Opening checks format and completeness."""

    def __init__(self, path: str | Path, *, require_complete: bool = True, writable: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise StoreError(f"{self.path}: not a zarr store (no zarr.json); convert HDF5 files with data_tools.convert")
        try:
            self.group = zarr.open_group(str(self.path), mode="r+" if writable else "r", zarr_format=3)
        except Exception as err:  # zarr raises several types for broken metadata
            raise StoreError(f"{self.path}: cannot open zarr store: {err}") from err
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        if self.attrs.get("format") != FORMAT_NAME:
            raise StoreError(f"{self.path}: attrs.format is {self.attrs.get('format')!r}, expected {FORMAT_NAME!r}")
        if self.attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: format_version {self.attrs.get('format_version')} is not supported (expected {FORMAT_VERSION})"
            )
        if require_complete and self.attrs.get("complete") is not True:
            raise StoreError(
                f"{self.path}: store is incomplete (conversion interrupted?); re-run the same data_tools.convert command"
            )
        try:
            self.showers = self.group[SHOWERS]
            self.energies_array = self.group[ENERGIES]
        except KeyError as err:
            raise StoreError(f"{self.path}: array {err.args[0]!r} is missing (expected {SHOWERS!r} and {ENERGIES!r})") \
                from None
        name = (self.attrs.get("geometry") or {}).get("name") if isinstance(self.attrs.get("geometry"), dict) else None
        try:
            self.geometry: Geometry = load_geometry(name)
        except (GeometryError, TypeError):
            raise StoreError(f"{self.path}: attrs.geometry.name is {name!r}, expected one of "
                             f"{', '.join(sorted(GEOMETRY_FILES))}") from None
        expected = (self.showers.shape[0], *self.geometry.shape)
        if self.showers.shape != expected or self.energies_array.shape != (self.showers.shape[0],):
            raise StoreError(f"{self.path}: arrays of shape {self.showers.shape} and {self.energies_array.shape} do not "
                             f"fit geometry {name} (expected {expected} and ({expected[0]},))")

    @property
    def complete(self) -> bool:
        return self.attrs.get("complete") is True

    @property
    def n(self) -> int:
        return int(self.showers.shape[0])

    @property
    def chunk_rows(self) -> int:
        return int(self.showers.chunks[0])

    @property
    def shard_rows(self) -> int:
        return int(self.showers.shards[0]) if self.showers.shards else self.chunk_rows

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_rows)

    @property
    def stats(self) -> dict[str, Any]:
        return self.attrs["stats"]

    def chunk_ids(self, split: Literal["train", "validation", "all"]) -> list[int]:
        """Chunk indices of one split (the split is stored in attrs)."""
        if split == "all":
            return list(range(self.n_chunks))
        val = set(self.attrs["split"]["validation_chunks"])
        if split == "validation":
            return sorted(val)
        if split == "train":
            return [i for i in range(self.n_chunks) if i not in val]
        raise ValueError(f"unknown split {split!r}; expected train, validation or all")

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n)

    def read_chunk(self, chunk: int) -> np.ndarray:
        """One whole inner chunk of showers, ``(rows, *geometry.shape)`` float32."""
        start, stop = self.chunk_range(chunk)
        return self.showers[start:stop]

    @cached_property
    def energies(self) -> np.ndarray:
        """All incident energies (MeV), read once (8 bytes per shower)."""
        return self.energies_array[:]

    def summary(self) -> dict[str, Any]:
        """Small JSON-able description of the store."""
        return {
            "path": str(self.path),
            "n": self.n,
            "geometry": self.attrs.get("geometry", {}).get("name"),
            "shape": list(self.showers.shape),
            "chunk_rows": self.chunk_rows,
            "shard_rows": self.shard_rows,
            "complete": self.complete,
            "layout": self.attrs.get("layout"),
        }


def read_attrs(path: str | Path) -> dict[str, Any] | None:
    """Root attrs of a zarr store without validating it, or None when ``path`` holds no store."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("attributes", {})
    except (OSError, json.JSONDecodeError):
        return None
