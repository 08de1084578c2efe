"""CaloChallenge high-level features and voxel statistics, computed in one streaming pass.

Per shower (after the voxel threshold, as the challenge's ``HighLevelFeatures``):

- ``e_tot / e_inc``; ``e_layer[l]``, the energy of each non-empty layer;
- centre of energy ``ec_x[l] = sum(x E) / sum(E)`` and ``ec_y``, with ``x = r cos(alpha)``,
  ``y = r sin(alpha)`` at the bin centres (the challenge's eta and phi), and the widths
  ``width_x = sqrt(max(sum(x^2 E)/sum(E) - ec_x^2, 0))``, ``width_y``, for layers binned in alpha;
  0 for a layer without energy;
- ``sparsity[l]``: the fraction of the layer's voxels that are zero.

Per sample: the voxel-energy spectrum on a fine fixed log grid, the summed shower (all showers
and per incident-energy bin), the summed layer energies, and optionally the low-level classifier's
subsample as sparse rows. The per-shower features are kept for every shower or for chosen rows
only (``hlf_rows``), while a callback (``on_block``) sees every block's features: what the
evaluation of a sample larger than its reference uses to keep its memory independent of N.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tqdm import tqdm

from pipeline.data.samples import Sample
from pipeline.evaluation.sparse_rows import SparseRows
from pipeline.physics.geometry import Geometry

#: incident-energy bins (MeV) of the energy-binned observables; the last one includes its upper edge
ENERGY_BINS_MEV: tuple[tuple[float, float], ...] = ((1e3, 1e4), (1e4, 1e5), (1e5, 1e6))
ENERGY_BIN_LABELS: tuple[str, ...] = ("1-10 GeV", "10-100 GeV", "100-1000 GeV")
#: fine grid of the voxel spectrum: log10(E / MeV) from VOXEL_LOG_MIN, VOXEL_PER_DECADE bins a decade
VOXEL_LOG_MIN, VOXEL_LOG_MAX, VOXEL_PER_DECADE = -4.0, 7.0, 100
VOXEL_BINS = int(round((VOXEL_LOG_MAX - VOXEL_LOG_MIN) * VOXEL_PER_DECADE))
#: showers per group of the voxel spectrum's counts (the groups give its statistical noise floor)
VOXEL_GROUP = 32
#: at most this many groups: larger samples get larger groups, so the counts take ~18 MB whatever N
MAX_VOXEL_GROUPS = 4096
#: the layer-wise feature families and their scale for histograms
FAMILIES: dict[str, str] = {
    "e_layer": "log", "ec_x": "linear", "ec_y": "linear", "width_x": "linear", "width_y": "linear", "sparsity": "linear",
}
#: classifier input scale of the challenge: log10(E_layer + 1e-8), positions and widths / 100 mm
LOG_EPS, LENGTH_SCALE = 1e-8, 100.0


def energy_bin_index(energies_mev: np.ndarray) -> np.ndarray:
    """Index into ENERGY_BINS_MEV per shower, -1 outside every bin."""
    e = np.asarray(energies_mev)
    out = np.full(e.shape, -1, dtype=np.int64)
    for k, (lo, hi) in enumerate(ENERGY_BINS_MEV):
        last = k == len(ENERGY_BINS_MEV) - 1
        out[(e >= lo) & ((e <= hi) if last else (e < hi))] = k
    return out


class LayerMoments:
    """Per layer, the (V_l, 5) matrix of [1, x, y, x^2, y^2] at voxel centres, voxel order (alpha, r)."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.layers = geometry.relevant_layers
        self.alpha_layers = [i for i in self.layers if geometry.layers[i].n_alpha > 1]
        self.matrices: dict[int, np.ndarray] = {}
        for i in self.layers:
            layer = geometry.layers[i]
            r = 0.5 * (np.asarray(layer.r_edges[:-1]) + np.asarray(layer.r_edges[1:]))
            a = 0.5 * (layer.alpha_edges[:-1] + layer.alpha_edges[1:])
            x = (np.cos(a)[:, None] * r[None, :]).reshape(-1)
            y = (np.sin(a)[:, None] * r[None, :]).reshape(-1)
            self.matrices[i] = np.stack([np.ones_like(x), x, y, x * x, y * y], axis=1)


#: the per-shower arrays of :class:`HighLevelFeatures`
ARRAYS = ("e_inc", "e_tot", "e_layer", "sparsity", "ec_x", "ec_y", "width_x", "width_y")


@dataclass
class HighLevelFeatures:
    """Per-shower features of one sample; layer-wise arrays are (n, layers)."""

    layers: list[int]
    alpha_layers: list[int]
    e_inc: np.ndarray
    e_tot: np.ndarray
    e_layer: np.ndarray
    sparsity: np.ndarray
    ec_x: np.ndarray
    ec_y: np.ndarray
    width_x: np.ndarray
    width_y: np.ndarray

    @property
    def n(self) -> int:
        return self.e_inc.size

    def family_layers(self, family: str) -> list[int]:
        return self.layers if family in ("e_layer", "sparsity") else self.alpha_layers

    def observables(self, rows: np.ndarray | slice = slice(None)) -> dict[str, tuple[np.ndarray, str]]:
        """Name -> (values, histogram scale) for every scalar observable (optionally for some rows)."""
        out = {"etot_einc": ((self.e_tot / self.e_inc)[rows], "linear")}
        for family, scale in FAMILIES.items():
            values = getattr(self, family)
            for j, layer in enumerate(self.family_layers(family)):
                out[f"{family}_{layer:02d}"] = (values[rows, j], scale)
        return out

    def classifier_features(self) -> np.ndarray:
        """The challenge's high-level classifier input, (n, 1 + L + 4 L_alpha) float32."""
        return np.concatenate([
            np.log10(self.e_inc)[:, None], np.log10(self.e_layer + LOG_EPS),
            self.ec_x / LENGTH_SCALE, self.ec_y / LENGTH_SCALE, self.width_x / LENGTH_SCALE, self.width_y / LENGTH_SCALE,
        ], axis=1).astype(np.float32)

    def take(self, rows: np.ndarray) -> "HighLevelFeatures":
        """The features of ``rows`` only."""
        arrays = {k: getattr(self, k)[rows] for k in ARRAYS}
        return HighLevelFeatures(self.layers, self.alpha_layers, **arrays)

    @classmethod
    def concatenate(cls, parts: list["HighLevelFeatures"]) -> "HighLevelFeatures":
        arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ARRAYS}
        return cls(parts[0].layers, parts[0].alpha_layers, **arrays)


def _layer_sums(showers: np.ndarray, moments: LayerMoments) -> np.ndarray:
    """(n, layers, 5) sums of E, xE, yE, x^2 E, y^2 E per relevant layer. float32 products (6x faster
    than float64; relative error ~1e-6, far below any histogram bin)."""
    g = moments.geometry
    n = showers.shape[0]
    if g.is_regular:
        m = moments.matrices[moments.layers[0]].astype(np.float32)
        return (showers.reshape(n * g.n_layers, -1) @ m).reshape(n, g.n_layers, 5).astype(np.float64)
    slices = g.layer_slices
    return np.stack([showers[:, slices[i]] @ moments.matrices[i].astype(np.float32) for i in moments.layers],
                    axis=1).astype(np.float64)


def high_level_features(showers: np.ndarray, energies: np.ndarray, moments: LayerMoments) -> HighLevelFeatures:
    """Features of thresholded flat float32 showers ``(n, V)`` with incident energies ``(n,)``."""
    g = moments.geometry
    showers = np.asarray(showers, dtype=np.float32)
    sums = _layer_sums(showers, moments)
    e_layer = sums[:, :, 0]
    if g.is_regular:
        sparsity = 1.0 - np.count_nonzero(showers.reshape(len(showers), g.n_layers, -1), axis=2) / g.layers[0].n_voxels
    else:
        slices = g.layer_slices
        sparsity = np.stack([1.0 - np.count_nonzero(showers[:, slices[i]], axis=1) / g.layers[i].n_voxels
                             for i in moments.layers], axis=1)
    cols = [moments.layers.index(i) for i in moments.alpha_layers]
    s = sums[:, cols]
    e = s[:, :, 0]
    inv = np.divide(1.0, e, out=np.zeros_like(e), where=e > 0)
    ec_x, ec_y = s[:, :, 1] * inv, s[:, :, 2] * inv
    width_x = np.sqrt(np.clip(s[:, :, 3] * inv - ec_x**2, 0.0, None))
    width_y = np.sqrt(np.clip(s[:, :, 4] * inv - ec_y**2, 0.0, None))
    return HighLevelFeatures(moments.layers, moments.alpha_layers, np.asarray(energies, dtype=np.float64),
                             e_layer.sum(axis=1), e_layer, sparsity, ec_x, ec_y, width_x, width_y)


def voxel_log_edges() -> np.ndarray:
    """Edges (MeV) of the fine voxel-spectrum grid."""
    return 10.0 ** np.linspace(VOXEL_LOG_MIN, VOXEL_LOG_MAX, VOXEL_BINS + 1)


def voxel_spectrum(showers: np.ndarray, group: int = VOXEL_GROUP) -> np.ndarray:
    """Counts of non-zero voxel energies on the fine grid per group of ``group`` consecutive showers,
    ``(groups, VOXEL_BINS)`` int32; values outside the grid go to the end bins."""
    mask = showers > 0
    log_e = np.log10(showers[mask], dtype=np.float32)
    idx = np.clip(((log_e - VOXEL_LOG_MIN) * VOXEL_PER_DECADE).astype(np.int64), 0, VOXEL_BINS - 1)
    n_groups = -(-showers.shape[0] // group)
    per_group = np.add.reduceat(np.count_nonzero(mask, axis=1), np.arange(0, showers.shape[0], group))
    key = np.repeat(np.arange(n_groups) * VOXEL_BINS, per_group) + idx
    return np.bincount(key, minlength=n_groups * VOXEL_BINS).reshape(n_groups, VOXEL_BINS).astype(np.int32)


@dataclass
class SampleObservables:
    """Everything the evaluation needs from one sample, from one pass over it."""

    name: str
    geometry: Geometry
    hlf: HighLevelFeatures
    voxel_groups: np.ndarray  # (groups of >= VOXEL_GROUP showers, VOXEL_BINS) voxel-spectrum counts
    shower_sum: np.ndarray  # (V,) float64
    shower_sum_ebins: np.ndarray  # (len(ENERGY_BINS_MEV), V)
    n_ebins: np.ndarray
    e_layer_sum: np.ndarray  # (layers,) float64: summed over every shower
    n_showers: int  # every shower of the sample (``hlf`` may keep fewer)
    low_level: SparseRows | None = None
    low_level_energies: np.ndarray | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.n_showers

    @property
    def mean_layer_energy(self) -> np.ndarray:
        """Mean energy per relevant layer over every shower (the longitudinal profile)."""
        return self.e_layer_sum / max(self.n, 1)

    @property
    def voxel_counts(self) -> np.ndarray:
        return self.voxel_groups.sum(axis=0, dtype=np.int64)

    @property
    def mean_shower(self) -> np.ndarray:
        return self.shower_sum / max(self.n, 1)


def radial_profile(obs: SampleObservables) -> tuple[np.ndarray, np.ndarray]:
    """Mean energy per radial bin summed over layers and angles (bins of all layers by centre radius)."""
    g = obs.geometry
    mean = obs.mean_shower
    centres: dict[float, float] = {}
    for layer in g.relevant_layers:
        spec = g.layers[layer]
        r = 0.5 * (np.asarray(spec.r_edges[:-1]) + np.asarray(spec.r_edges[1:]))
        per_r = mean[g.layer_slices[layer]].reshape(spec.n_alpha, spec.n_radial).sum(axis=0)
        for rc, e in zip(np.round(r, 6), per_r):
            centres[rc] = centres.get(rc, 0.0) + float(e)
    keys = np.array(sorted(centres))
    return keys, np.array([centres[k] for k in keys])


def _local_rows(rows: np.ndarray, start: int, n: int) -> np.ndarray:
    """The sorted ``rows`` that fall into ``[start, start + n)``, relative to ``start``."""
    lo, hi = np.searchsorted(rows, [start, start + n])
    return rows[lo:hi] - start


def low_level_inputs(showers: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """The challenge's low-level classifier voxels: 100 * E_voxel / E_inc (float32)."""
    return (showers * (100.0 / energies)[:, None]).astype(np.float32)


def compute_observables(
    sample: Sample,
    *,
    low_level_rows: np.ndarray | None = None,
    block_rows: int | None = None,
    progress: bool = False,
    hlf_rows: np.ndarray | None = None,
    on_block: Callable[[HighLevelFeatures], None] | None = None,
) -> SampleObservables:
    """Stream ``sample`` once: features, voxel spectrum, summed showers, low-level subsample rows.

    ``hlf_rows``: keep the per-shower features of these rows only (default: every row);
    ``on_block``: called with the features of every block, in order."""
    t0 = time.perf_counter()
    g = sample.geometry
    moments = LayerMoments(g)
    keep = None if low_level_rows is None else np.unique(np.asarray(low_level_rows, dtype=np.int64))
    keep_hlf = None if hlf_rows is None else np.unique(np.asarray(hlf_rows, dtype=np.int64))
    e_layer_sum, n_showers = 0.0, 0
    group = max(VOXEL_GROUP, -(-sample.n // MAX_VOXEL_GROUPS))
    parts, sparse_parts, groups = [], [], []
    total = np.zeros(g.n_voxels)
    total_e = np.zeros((len(ENERGY_BINS_MEV), g.n_voxels))
    n_e = np.zeros(len(ENERGY_BINS_MEV), dtype=np.int64)
    bar = tqdm(total=sample.n, desc=f"observables {sample.name}", unit="shower", disable=not progress, leave=False)
    for block in sample.blocks(block_rows):
        s, e = block.showers, block.energies
        hlf = high_level_features(s, e, moments)
        e_layer_sum = e_layer_sum + hlf.e_layer.sum(axis=0)
        n_showers += len(e)
        if on_block is not None:
            on_block(hlf)
        if keep_hlf is not None:
            hlf = hlf.take(_local_rows(keep_hlf, block.start, len(e)))
        parts.append(hlf)
        groups.append(voxel_spectrum(s, group))
        total += s.sum(axis=0, dtype=np.float64)
        ebin = energy_bin_index(e)
        for k in range(len(ENERGY_BINS_MEV)):
            sel = ebin == k
            n_e[k] += int(sel.sum())
            if sel.any():
                total_e[k] += s[sel].sum(axis=0, dtype=np.float64)
        if keep is not None:
            local = _local_rows(keep, block.start, len(e))
            if local.size:
                sparse_parts.append(SparseRows.from_dense(low_level_inputs(s[local], e[local])))
        bar.update(len(e))
    bar.close()
    if not parts:
        raise ValueError(f"{sample.name}: no showers")
    out = SampleObservables(sample.name, g, HighLevelFeatures.concatenate(parts),
                            np.concatenate(groups), total, total_e, n_e,
                            np.asarray(e_layer_sum, dtype=np.float64), n_showers)
    if keep is not None:
        out.low_level = SparseRows.concatenate(sparse_parts, g.n_voxels)
        out.low_level_energies = sample.energies[keep]
    out.seconds = time.perf_counter() - t0
    return out
