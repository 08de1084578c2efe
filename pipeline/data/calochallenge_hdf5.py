"""The CaloChallenge HDF5 format: validated reading and streaming writing.

A file holds ``incident_energies`` (N, 1) and ``showers`` (N, V), both in MeV, gzip-compressed,
voxel order (layer, angle, radius) with the radial index fastest.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from pipeline.physics.geometry import Geometry

ENERGY_KEY = "incident_energies"
SHOWER_KEY = "showers"


class InputError(ValueError):
    """An input file that is not a valid CaloChallenge file for the chosen geometry."""


@dataclass(frozen=True)
class ShowerFileInfo:
    """What a validated CaloChallenge file holds."""

    path: Path
    n: int
    n_voxels: int
    dtype: str
    size_bytes: int


def inspect_file(path: str | Path, geometry: Geometry | None = None) -> ShowerFileInfo:
    """Open ``path`` and check keys and shapes (against ``geometry`` when given) without reading data."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            for key in (ENERGY_KEY, SHOWER_KEY):
                if key not in f:
                    raise InputError(f"{path}: missing dataset {key!r} (found keys {sorted(f.keys())})")
                if not isinstance(f[key], h5py.Dataset):
                    raise InputError(f"{path}: {key!r} is not a dataset")
            e, s = f[ENERGY_KEY], f[SHOWER_KEY]
            if not (e.ndim == 1 or (e.ndim == 2 and e.shape[1] == 1)):
                raise InputError(f"{path}: {ENERGY_KEY!r} has shape {e.shape}, expected (N, 1)")
            if s.ndim != 2:
                raise InputError(f"{path}: {SHOWER_KEY!r} has shape {s.shape}, expected (N, V)")
            if e.shape[0] != s.shape[0]:
                raise InputError(
                    f"{path}: {ENERGY_KEY!r} has {e.shape[0]} rows but {SHOWER_KEY!r} has {s.shape[0]}"
                )
            if geometry is not None and s.shape[1] != geometry.n_voxels:
                raise InputError(
                    f"{path}: {SHOWER_KEY!r} has {s.shape[1]} voxels per shower, but geometry "
                    f"{geometry.name!r} has {geometry.n_voxels}"
                )
            if s.shape[0] == 0:
                raise InputError(f"{path}: file holds no showers")
            for key in (ENERGY_KEY, SHOWER_KEY):
                if f[key].dtype.kind != "f":
                    raise InputError(f"{path}: {key!r} has dtype {f[key].dtype}, expected floating point")
            return ShowerFileInfo(path, int(s.shape[0]), int(s.shape[1]), str(s.dtype), path.stat().st_size)
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err})") from err


def read_energies(path: str | Path) -> np.ndarray:
    """All incident energies of a file as a float64 vector (N,) (small: 8 bytes per shower)."""
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f[ENERGY_KEY][...], dtype=np.float64).reshape(-1)
    except OSError as err:
        raise InputError(f"{path}: cannot read {ENERGY_KEY!r} ({err})") from err


def read_showers(path: str | Path, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of ``showers`` as stored (no dtype change)."""
    try:
        with h5py.File(path, "r") as f:
            return f[SHOWER_KEY][start:stop]
    except OSError as err:
        raise InputError(f"{path}: cannot read {SHOWER_KEY!r} rows {start}-{stop} (corrupt or truncated file?): {err}") from err


#: room kept free while writing an HDF5 file: HDF5 still has to write its metadata and small datasets when the
#: file is closed, and when that fails on a full disk h5py 3.16 (bundled HDF5) crashes the process (measured:
#: a segmentation fault in ``File.close`` on a full tmpfs). Pre-compressed chunks are written only while
#: this much room remains, so a full disk becomes an ``OSError`` that closes cleanly.
WRITE_RESERVE = 4 << 20


def write_chunk(dset: h5py.Dataset, row: int, data: bytes) -> None:
    """``write_direct_chunk`` of one pre-compressed chunk starting at ``row``, after checking for room."""
    path = dset.file.filename
    stat = os.statvfs(path)
    if stat.f_bavail * stat.f_frsize < len(data) + WRITE_RESERVE:
        raise OSError(errno.ENOSPC, f"No space left on device (less than {WRITE_RESERVE >> 20} MiB free, kept for "
                                    f"HDF5 to close the file cleanly)", path)
    dset.id.write_direct_chunk((row, 0), data)


@contextmanager
def shower_file_writer(
    path: str | Path,
    n: int,
    n_voxels: int,
    *,
    dtype: str = "float64",
    chunk_rows: int = 100,
    compression_level: int = 4,
    overwrite: bool = False,
) -> Iterator[h5py.File]:
    """Create a CaloChallenge file of ``n`` showers to be filled block by block.

    Written to ``path + '.partial'`` and renamed on success, so an interrupted writer never
    leaves a file that looks complete. Yields the open h5py file; fill ``f['showers'][a:b]``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite to replace it)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: directory {path.parent} does not exist")
    partial = path.with_name(path.name + ".partial")
    try:
        with h5py.File(partial, "w") as f:
            f.create_dataset(ENERGY_KEY, shape=(n, 1), dtype=dtype, compression="gzip", compression_opts=compression_level)
            f.create_dataset(
                SHOWER_KEY,
                shape=(n, n_voxels),
                dtype=dtype,
                chunks=(max(1, min(chunk_rows, n)), n_voxels),
                compression="gzip",
                compression_opts=compression_level,
            )
            yield f
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
