"""One reader for shower samples: CaloChallenge HDF5, zarr store or arrays (what an evaluation compares,
and the reference whose incident energies a generation reuses).

Every sample yields validated blocks of flat ``(rows, V)`` float32 showers (MeV) with their
incident energies, the voxel threshold already applied, so no caller ever holds a whole sample.
Errors are :class:`SampleError` naming the sample's role and path (and the row where it matters).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from pipeline.data.calochallenge_hdf5 import SHOWER_KEY, InputError, inspect_file, read_energies
from pipeline.data.shower_store import ShowerStore, StoreError
from pipeline.physics.geometry import GEOMETRY_FILES, Geometry, GeometryError, load_geometry

#: uncompressed float32 bytes per block read (ds3: ~400 showers)
BLOCK_BYTES = 64 << 20


class SampleError(InputError):
    """A sample that cannot be evaluated (unreadable, wrong geometry, NaN, bad energies)."""


@dataclass(frozen=True)
class Block:
    """Rows ``[start, start + len(energies))`` of a sample: thresholded float32 showers (rows, V)."""

    start: int
    energies: np.ndarray
    showers: np.ndarray


def geometry_for_voxels(n_voxels: int) -> str | None:
    """The geometry name whose voxel count is ``n_voxels`` (None if there is none)."""
    return next((g for g in GEOMETRY_FILES if load_geometry(g).n_voxels == n_voxels), None)


class Sample(ABC):
    """A sample of showers of one geometry, read block by block."""

    kind: str = "sample"

    def __init__(self, name: str, geometry: Geometry, n: int) -> None:
        self.name, self.geometry, self.n = name, geometry, n

    @abstractmethod
    def _raw_energies(self) -> np.ndarray: ...

    @abstractmethod
    def _read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new array (thresholded in place), any float dtype."""

    def _row_alignment(self) -> int:
        return 1

    def close(self) -> None:  # noqa: B027 - an optional hook: samples without handles keep this no-op
        """Release open handles (reopened on the next read)."""

    @cached_property
    def energies(self) -> np.ndarray:
        """Incident energies (MeV, float64, (n,)); finite and positive, else SampleError."""
        e = np.asarray(self._raw_energies(), dtype=np.float64).reshape(-1)
        if e.size != self.n:
            raise SampleError(f"{self.name}: {e.size} incident energies for {self.n} showers")
        bad = np.flatnonzero(~np.isfinite(e) | (e <= 0))
        if bad.size:
            raise SampleError(f"{self.name}: incident energy of row {bad[0]} is {e[bad[0]]!r} (must be finite and > 0)")
        return e

    def block_rows(self, block_bytes: int = BLOCK_BYTES) -> int:
        """Rows per block: about ``block_bytes`` of float32, a multiple of the storage chunk rows."""
        align = self._row_alignment()
        rows = max(1, block_bytes // (4 * self.geometry.n_voxels))
        return max(align, rows // align * align)

    def _load(self, start: int, stop: int, threshold: bool) -> Block:
        raw = self._read(start, stop)
        showers = np.asarray(raw, dtype=np.float32).reshape(stop - start, self.geometry.n_voxels)
        finite = np.isfinite(showers).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise SampleError(f"{self.name}: showers row {row} holds NaN or inf")
        if threshold:
            showers[showers < self.geometry.threshold_mev] = 0.0
        return Block(start, self.energies[start:stop], showers)

    def blocks(self, rows: int | None = None, *, threshold: bool = True, stop: int | None = None) -> Iterator[Block]:
        """Blocks of ``rows`` showers in order (the next block is read in a background thread)."""
        rows = rows or self.block_rows()
        stop = self.n if stop is None else min(stop, self.n)
        ranges = [(a, min(a + rows, stop)) for a in range(0, stop, rows)]
        if not ranges:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="sample-reader") as pool:
            future = pool.submit(self._load, *ranges[0], threshold)
            try:
                for i in range(len(ranges)):
                    block = future.result()
                    if i + 1 < len(ranges):
                        future = pool.submit(self._load, *ranges[i + 1], threshold)
                    yield block
            finally:
                future.cancel()
                self.close()

    def describe(self) -> dict[str, Any]:
        return {"path": self.name, "kind": self.kind, "n": self.n, "geometry": self.geometry.name}


class HDF5Sample(Sample):
    """A CaloChallenge HDF5 file (``incident_energies`` (N, 1), ``showers`` (N, V), MeV)."""

    kind = "CaloChallenge HDF5"

    def __init__(self, path: Path, geometry: Geometry, n: int) -> None:
        super().__init__(str(path), geometry, n)
        self.path = path
        self._file: h5py.File | None = None

    def _dataset(self) -> h5py.Dataset:
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise SampleError(f"{self.name}: not a readable HDF5 file ({err})") from err
        return self._file[SHOWER_KEY]

    def _raw_energies(self) -> np.ndarray:
        try:
            return read_energies(self.path)
        except InputError as err:
            raise SampleError(str(err)) from err

    def _row_alignment(self) -> int:
        chunks = self._dataset().chunks
        return int(chunks[0]) if chunks else 1

    def _read(self, start: int, stop: int) -> np.ndarray:
        try:
            return self._dataset()[start:stop]
        except (OSError, RuntimeError) as err:
            raise SampleError(f"{self.name}: cannot read {SHOWER_KEY!r} rows {start}-{stop} (corrupt or truncated?): {err}") from err

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class StoreSample(Sample):
    """A zarr shower store of this project (``pipeline.data.shower_store``)."""

    kind = "zarr shower store"

    def __init__(self, store: ShowerStore) -> None:
        super().__init__(str(store.path), store.geometry, store.n)
        self.store = store

    def _raw_energies(self) -> np.ndarray:
        return self.store.energies

    def _row_alignment(self) -> int:
        return self.store.chunk_rows

    def _read(self, start: int, stop: int) -> np.ndarray:
        try:
            return self.store.showers[start:stop]
        except Exception as err:  # zarr/numcodecs raise several types for damaged chunks
            raise SampleError(f"{self.name}: cannot read showers rows {start}-{stop}: {err}") from err


class ArraySample(Sample):
    """Showers already in memory: ``(n, V)`` or ``(n, *geometry.shape)`` with energies ``(n,)``."""

    kind = "array"

    def __init__(self, showers: np.ndarray, energies: np.ndarray, geometry: Geometry, name: str = "array") -> None:
        showers = np.asarray(showers)
        if showers.ndim < 2 or int(np.prod(showers.shape[1:])) != geometry.n_voxels:
            raise SampleError(f"{name}: showers of shape {showers.shape} do not match geometry {geometry.name!r} "
                              f"({geometry.n_voxels} voxels)")
        super().__init__(name, geometry, showers.shape[0])
        self._showers = showers.reshape(showers.shape[0], -1)
        self._energies = np.asarray(energies)

    def _raw_energies(self) -> np.ndarray:
        return self._energies

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self._showers[start:stop].copy()  # thresholding works in place


def open_sample(path: str | Path, geometry: str | None = None, role: str = "sample") -> Sample:
    """Open an HDF5 file or zarr store; check it against ``geometry`` (inferred when None)."""
    path = Path(path)
    label = f"{role} sample {path}"
    if (path / "zarr.json").is_file():
        try:
            sample: Sample = StoreSample(ShowerStore(path))
        except (StoreError, KeyError, GeometryError) as err:
            raise SampleError(f"{label}: {err}") from err
        if geometry is not None and sample.geometry.name != geometry:
            raise SampleError(f"{label}: the store holds geometry {sample.geometry.name!r}, not {geometry!r}")
        return sample
    if not path.exists():
        raise SampleError(f"{label}: no such file or zarr store")
    if path.is_dir():
        raise SampleError(f"{label}: a directory that is not a zarr store (no zarr.json)")
    try:
        geo = load_geometry(geometry) if geometry is not None else None
    except GeometryError as err:
        raise SampleError(str(err)) from err
    try:
        info = inspect_file(path, geo)
    except InputError as err:
        raise SampleError(f"{role} sample: {err}") from err
    if geo is None:
        name = geometry_for_voxels(info.n_voxels)
        if name is None:
            raise SampleError(f"{label}: {info.n_voxels} voxels per shower match no known geometry")
        geo = load_geometry(name)
    return HDF5Sample(path, geo, info.n)


def check_compatible(generated: Sample, reference: Sample) -> None:
    """Both samples must share one geometry."""
    if generated.geometry.name != reference.geometry.name:
        raise SampleError(
            f"generated sample {generated.name} has geometry {generated.geometry.name!r} but reference sample "
            f"{reference.name} has {reference.geometry.name!r}"
        )
