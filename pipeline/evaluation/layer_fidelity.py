"""Fidelity of the layer energies alone: how close the layer-energy network's output is to the data.

For a run that trains the layer network by itself (``train.networks: [layers]``), its fidelity monitor, the
fidelity benchmark and the golden test compare generated and reference layer energies ``(N, L)`` in MeV for the
same incident energies with:

- separation powers (:mod:`.separation`) of E_tot/E_inc and of each layer's energy (log scale, empty layers in
  a bin of their own), averaged over the layers;
- the mean response E_tot/E_inc of both samples, the ratio of the two in 10 log-spaced incident-energy bins (its
  largest deviation from 1 shows wiggles in the response versus energy) and the fraction of showers with
  E_tot > E_inc;
- a classifier two-sample test (:mod:`.classifier`, the CaloChallenge DNN) on
  ``(log10 E_inc, log10(E_l / E_inc + 1e-8) for every layer, log10(E_tot / E_inc + 1e-8))``.

Generated layers below the readout threshold should already be zero (:func:`pipeline.diffusion.synthesize_layers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.samples import open_sample
from pipeline.evaluation.classifier import ClassifierConfig, DenseFeatures, classifier_test
from pipeline.evaluation.separation import compare

FLOOR = 1e-8  # added to energy fractions before the logarithm (an empty layer is 0)
ENERGY_BINS = 10  # log-spaced incident-energy bins of the response ratio


def layer_features(e_layer: np.ndarray, e_inc: np.ndarray) -> np.ndarray:
    """Classifier inputs ``(N, L + 2)`` from layer energies ``(N, L)`` and incident energies ``(N,)`` in MeV."""
    e_inc = np.asarray(e_inc, dtype=np.float64).reshape(-1, 1)
    u = np.asarray(e_layer, dtype=np.float64) / e_inc
    return np.concatenate([np.log10(e_inc), np.log10(u + FLOOR), np.log10(u.sum(axis=1, keepdims=True) + FLOOR)],
                          axis=1).astype(np.float32)


def compare_layer_energies(generated: np.ndarray, reference: np.ndarray, e_inc_generated: np.ndarray,
                           e_inc_reference: np.ndarray, *, bins: int = 50,
                           classifier: ClassifierConfig | None = None) -> dict[str, Any]:
    """Separation powers, responses and (with ``classifier``) the classifier AUC of two layer-energy samples."""
    response_gen = generated.sum(axis=1) / e_inc_generated
    response_ref = reference.sum(axis=1) / e_inc_reference
    etot = compare(response_gen, response_ref, "linear", bins)
    layers = [compare(generated[:, k], reference[:, k], "log", bins) for k in range(reference.shape[1])]
    out: dict[str, Any] = {
        "showers": [int(len(generated)), int(len(reference))],
        "etot_einc": etot.value, "etot_einc_floor": etot.floor,
        "e_layer": float(np.mean([s.value for s in layers])), "e_layer_floor": float(np.mean([s.floor for s in layers])),
        "e_layer_max": float(max(s.value for s in layers)),
        "response_generated": float(response_gen.mean()), "response_reference": float(response_ref.mean()),
        "empty_layers_generated": float(np.mean(generated <= 0)), "empty_layers_reference": float(np.mean(reference <= 0)),
    }
    edges = np.geomspace(e_inc_reference.min(), e_inc_reference.max() * (1 + 1e-9), ENERGY_BINS + 1)
    ratios = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        g, r = (e_inc_generated >= lo) & (e_inc_generated < hi), (e_inc_reference >= lo) & (e_inc_reference < hi)
        ratios.append(float(response_gen[g].mean() / response_ref[r].mean()) if g.any() and r.any() else float("nan"))
    out["response_ratio_by_energy"] = ratios
    out["response_wiggle"] = float(np.nanmax(np.abs(np.asarray(ratios) - 1)))
    out["etot_above_einc"] = float(np.mean(response_gen > 1))
    if classifier is not None:
        result = classifier_test(DenseFeatures(layer_features(generated, e_inc_generated)),
                                 DenseFeatures(layer_features(reference, e_inc_reference)), classifier,
                                 label="layer classifier")
        out["classifier_auc"] = result["auc"]
        out["classifier_auc_runs"] = [run["auc"] for run in result["runs"]]  # one per classifier seed
        out["classifier_auc_null_std"] = result.get("auc_null_std")
        out["classifier_protocol"] = result.get("protocol")
    return out


def reference_layer_energies(path: str | Path, geometry: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(layer energies (N, L), incident energies (N,))`` in MeV of a CaloChallenge HDF5 file or zarr store
    (voxels below the readout threshold dropped, as everywhere in the evaluation), read block by block."""
    sample = open_sample(str(path), geometry, "reference")
    parts = [sample.geometry.layer_energies(block.showers).astype(np.float64) for block in sample.blocks()]
    return np.concatenate(parts), sample.energies
