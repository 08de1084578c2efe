"""Compressed sparse rows of float32 voxels: the low-level classifier's in-memory subsample.

Calorimeter showers are mostly empty after the threshold (ds3: ~11% of voxels hold energy), so a
row costs 6 bytes per non-zero voxel (float32 value + uint16 column) instead of 4 bytes per voxel.
Batches are made dense on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SparseRows:
    """CSR matrix: row ``i`` holds ``values[indptr[i]:indptr[i+1]]`` at ``indices[...]``."""

    indptr: np.ndarray  # (n + 1,) int64
    indices: np.ndarray  # (nnz,) uint16 or int32
    values: np.ndarray  # (nnz,) float32
    n_cols: int

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> "SparseRows":
        rows, cols = np.nonzero(dense)
        counts = np.bincount(rows, minlength=dense.shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        dtype = np.uint16 if dense.shape[1] <= np.iinfo(np.uint16).max + 1 else np.int32
        return cls(indptr, cols.astype(dtype), dense[rows, cols].astype(np.float32), dense.shape[1])

    @classmethod
    def concatenate(cls, parts: list["SparseRows"], n_cols: int) -> "SparseRows":
        if not parts:
            return cls(np.zeros(1, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.float32), n_cols)
        offsets = np.cumsum([0] + [p.indptr[-1] for p in parts[:-1]])
        indptr = np.concatenate([parts[0].indptr[:1]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
        return cls(indptr, np.concatenate([p.indices for p in parts]), np.concatenate([p.values for p in parts]), n_cols)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.values.nbytes

    def dense(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order) as a dense ``(len(rows), n_cols)`` float32 array."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        out = np.zeros((rows.size, self.n_cols), dtype=np.float32)
        total = int(lengths.sum())
        if total:
            which = np.repeat(np.arange(rows.size), lengths)
            pos = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
            out[which, self.indices[pos].astype(np.int64)] = self.values[pos]
        return out
