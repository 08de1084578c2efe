"""The incident energy of every shower of a generated sample, a function of its index alone."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.config import ConfigError
from pipeline.data.samples import SampleError, open_sample
from pipeline.diffusion import shower_seed, uniform_from_seeds


class IncidentEnergies:
    """Incident energy (MeV) of shower i: log-uniform from (seed, i), or the i-th of a reference sample."""

    def __init__(self, seed: int, energy_range: Sequence[float], reference: str | None) -> None:
        self.seed, (self.lo, self.hi) = seed, energy_range
        self.reference = None
        if reference is not None:
            try:
                self.reference = np.asarray(open_sample(reference, role="energies_from").energies, dtype=np.float64)
            except SampleError as err:
                raise ConfigError(f"generate.energies_from: {err}") from None

    def describe(self) -> dict[str, Any]:
        if self.reference is not None:
            return {"energies": "reference", "energies_n": int(len(self.reference))}
        return {"energies": "log-uniform", "energy_range_mev": [float(self.lo), float(self.hi)]}

    def __call__(self, start: int, stop: int) -> np.ndarray:
        if self.reference is not None:
            return self.reference[start:stop].copy()
        u = uniform_from_seeds([shower_seed(self.seed, i) for i in range(start, stop)])
        return np.exp(np.log(self.lo) + u * (np.log(self.hi) - np.log(self.lo)))
