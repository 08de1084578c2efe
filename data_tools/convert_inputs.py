"""The input files of a conversion: validated and described for the store's attrs (size, sha256, dtype),
then read as one sequence of showers by global row range, checked finite and non-negative."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from pipeline.data.calochallenge_hdf5 import (
    ENERGY_KEY,
    SHOWER_KEY,
    InputError,
    inspect_file,
    read_energies,
)
from pipeline.physics.geometry import Geometry
from pipeline.runtime.files import sha256_file


def describe_inputs(paths: Sequence[Path], geometry: Geometry) -> tuple[list[dict], np.ndarray]:
    """Validate input files (keys, shapes, energies) and describe them for the store's attrs."""
    if not paths:
        raise InputError("no input files given")
    sources, energies = [], []
    for path in paths:
        info = inspect_file(path, geometry)
        e = read_energies(path)
        bad = np.flatnonzero(~np.isfinite(e) | (e <= 0))
        if bad.size:
            raise InputError(f"{path}: {ENERGY_KEY}[{bad[0]}] = {float(e[bad[0]])!r}; incident energies must be finite and > 0 MeV")
        sources.append({"path": str(path.resolve()), "name": path.name, "n": info.n,
                        "size_bytes": info.size_bytes, "sha256": sha256_file(path), "dtype": info.dtype})
        energies.append(e)
    return sources, np.concatenate(energies)


class InputRows:
    """The input files seen as one sequence of showers, read by global row range."""

    def __init__(self, sources: list[dict]) -> None:
        self.paths = [Path(s["path"]) for s in sources]
        self.offsets = np.cumsum([0] + [s["n"] for s in sources])
        self._files = [h5py.File(p, "r", rdcc_nbytes=64 << 20) for p in self.paths]

    def close(self) -> None:
        for f in self._files:
            f.close()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32, checked finite and non-negative."""
        parts = []
        for k, f in enumerate(self._files):
            lo, hi = max(start, self.offsets[k]), min(stop, self.offsets[k + 1])
            if lo >= hi:
                continue
            a, b = int(lo - self.offsets[k]), int(hi - self.offsets[k])
            try:
                block = f[SHOWER_KEY][a:b]
            except OSError as err:
                raise InputError(f"{self.paths[k]}: cannot read {SHOWER_KEY} rows {a}-{b} (corrupt or truncated file?): {err}") from err
            with np.errstate(over="ignore", invalid="ignore"):
                block32 = block.astype(np.float32)
            bad = ~np.isfinite(block32) | (block32 < 0)
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise InputError(
                    f"{self.paths[k]}: {SHOWER_KEY}[{a + row}, {col}] = {float(block[row, col])!r}; voxel energies must be "
                    "finite and >= 0 MeV (and fit in float32)"
                )
            parts.append(block32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
