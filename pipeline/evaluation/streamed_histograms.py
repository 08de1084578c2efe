"""The generated sample's side of every separation power, accumulated block by block.

The binning of each observable is fixed by the reference (:func:`.separation.reference_binning`),
so the generated sample never has to be held in memory: its histograms, incident-energy-bin
histograms and response moments are sums over blocks. The separation powers come out equal to
those of :func:`.separation.compare` on all the values at once; memory stays the same whatever the
generated sample's size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.evaluation.observables import (
    ENERGY_BIN_LABELS,
    ENERGY_BINS_MEV,
    HighLevelFeatures,
    SampleObservables,
    energy_bin_index,
)
from pipeline.evaluation.separation import (
    Binning,
    Separation,
    noise_floor,
    reference_binning,
    separation_power,
)

#: fewest showers per sample in an incident-energy bin for its separation powers
MIN_BIN_SHOWERS = 20


class Response:
    """Running mean and spread of E_tot / E_inc."""

    def __init__(self) -> None:
        self.n, self.s1, self.s2 = 0, 0.0, 0.0

    def add(self, r: np.ndarray) -> None:
        self.n += r.size
        self.s1 += float(r.sum())
        self.s2 += float(np.square(r).sum())

    def to_dict(self) -> dict[str, float]:
        if not self.n:
            return {"mean": math.nan, "std": math.nan}
        mean = self.s1 / self.n
        return {"mean": mean, "std": math.sqrt(max(self.s2 / self.n - mean * mean, 0.0))}


def response(hlf: HighLevelFeatures, rows: np.ndarray | slice = slice(None)) -> dict[str, float]:
    """Mean and spread of E_tot / E_inc over ``rows`` (as :class:`Response` accumulates them)."""
    acc = Response()
    acc.add((hlf.e_tot / hlf.e_inc)[rows])
    return acc.to_dict()


class GeneratedHistograms:
    """Counts of every observable of the generated sample in the reference's binnings (all showers,
    and per incident-energy bin where the reference has at least MIN_BIN_SHOWERS), plus the
    response; feed it every block's features with :meth:`add`."""

    def __init__(self, ref: SampleObservables, bins: int) -> None:
        self.ref = ref
        self.ref_bin = energy_bin_index(ref.hlf.e_inc)
        self.binnings = self._binnings(slice(None), bins)
        self.bin_binnings: list[dict[str, Binning] | None] = [
            self._binnings(rows, bins) if rows.size >= MIN_BIN_SHOWERS else None
            for rows in (np.flatnonzero(self.ref_bin == k) for k in range(len(ENERGY_BINS_MEV)))]
        self.counts = _zeros(self.binnings)
        self.bin_counts = [None if b is None else _zeros(b) for b in self.bin_binnings]
        self.response = Response()
        self.bin_response = [Response() for _ in ENERGY_BINS_MEV]

    def _binnings(self, rows: np.ndarray | slice, bins: int) -> dict[str, Binning]:
        return {name: reference_binning(values, scale, bins)
                for name, (values, scale) in self.ref.hlf.observables(rows).items()}

    def add(self, hlf: HighLevelFeatures) -> None:
        """Count one block of generated showers."""
        _count(self.counts, self.binnings, hlf.observables())
        ratio = hlf.e_tot / hlf.e_inc
        self.response.add(ratio)
        which = energy_bin_index(hlf.e_inc)
        for k, (binnings, counts) in enumerate(zip(self.bin_binnings, self.bin_counts)):
            rows = np.flatnonzero(which == k)
            self.bin_response[k].add(ratio[rows])
            if binnings is not None and counts is not None and rows.size:
                _count(counts, binnings, hlf.observables(rows))

    def separations(self) -> dict[str, Separation]:
        """Separation power of every observable over all showers."""
        return _separations(self.counts, self.binnings, self.ref.hlf.observables())

    def energy_binned(self) -> tuple[list[dict[str, Any]], list[dict[str, Separation] | None]]:
        """Per incident-energy bin: sizes, responses and separation powers (None where either
        sample has fewer than MIN_BIN_SHOWERS showers)."""
        rows_out, seps_out = [], []
        for k, (lo, hi) in enumerate(ENERGY_BINS_MEV):
            ref_rows = np.flatnonzero(self.ref_bin == k)
            n_gen = self.bin_response[k].n
            entry: dict[str, Any] = {
                "label": ENERGY_BIN_LABELS[k], "range_mev": [lo, hi], "n_generated": n_gen,
                "n_reference": int(ref_rows.size),
                "response_generated": self.bin_response[k].to_dict(),
                "response_reference": response(self.ref.hlf, ref_rows)}
            seps = None
            binnings, counts = self.bin_binnings[k], self.bin_counts[k]
            if binnings is not None and counts is not None and n_gen >= MIN_BIN_SHOWERS:
                seps = _separations(counts, binnings, self.ref.hlf.observables(ref_rows))
            rows_out.append(entry)
            seps_out.append(seps)
        return rows_out, seps_out


def _zeros(binnings: dict[str, Binning]) -> dict[str, np.ndarray]:
    return {name: np.zeros(b.n_bins, np.int64) for name, b in binnings.items()}


def _count(counts: dict[str, np.ndarray], binnings: dict[str, Binning],
           observables: dict[str, tuple[np.ndarray, str]]) -> None:
    for name, (values, _) in observables.items():
        counts[name] += binnings[name].counts(values)


def _separations(counts: dict[str, np.ndarray], binnings: dict[str, Binning],
                 ref_observables: dict[str, tuple[np.ndarray, str]]) -> dict[str, Separation]:
    out = {}
    for name, (values, _) in ref_observables.items():
        p, q = counts[name], binnings[name].counts(values)
        out[name] = Separation(separation_power(p, q), noise_floor(p, q), p, q, binnings[name])
    return out

