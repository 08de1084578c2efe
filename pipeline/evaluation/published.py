"""Published CaloChallenge 2022 results for context in the report (final results tables).

AUC: classifier Geant4 vs model on voxels ("low") and on high-level features ("high"); FPD and KPD
x 1e3 on high-level features (JetNet conventions). Source: the challenge's ``final_results``, via
``reference/calochallenge-results.md`` of the project notes. No published numbers for ds1 here.
"""

from __future__ import annotations

#: geometry -> rows of (model, AUC low, AUC high, FPD x1e3, KPD x1e3, ms per shower on GPU or None)
PUBLISHED: dict[str, list[tuple[str, float, float, float, float, float | None]]] = {
    "ds3": [
        ("Geant4 vs Geant4", 0.498, 0.500, 8.76, -0.009, None),
        ("CaloDiffusion", 0.561, 0.607, 71.2, 0.228, 810.0),
        ("CaloDREAM", 0.630, 0.524, 20.7, 0.010, 180.0),
        ("conv. L2LFlows", 0.588, 0.733, 171.6, 0.325, 16.0),
        ("CaloScore distilled", 0.776, 0.924, 610.9, 1.730, 162.0),
        ("CaloScore single-shot", 0.807, 0.939, 584.0, 1.593, 6.5),
        ("iCaloFlow student", 0.891, 0.971, 841.1, 2.599, 16.7),
        ("CaloClouds", 0.865, 0.980, 948.2, 5.183, 25.3),
    ],
    "ds2": [
        ("Geant4 vs Geant4", 0.500, 0.499, 10.8, -0.028, None),
        ("CaloDREAM", 0.531, 0.521, 24.6, 0.023, 74.3),
        ("CaloDiffusion", 0.577, 0.591, 146.9, 0.174, 99.5),
        ("CaloScore", 0.595, 0.666, 112.5, 0.149, 241.0),
        ("CaloScore distilled", 0.710, 0.891, 638.9, 1.013, 31.9),
        ("CaloScore single-shot", 0.747, 0.902, 546.3, 0.929, 2.5),
    ],
}

COLUMNS = ("model", "auc_low", "auc_high", "fpd_x1e3", "kpd_x1e3", "ms_per_shower_gpu")


def published_rows(geometry: str) -> list[dict[str, float | str | None]]:
    """The published rows for a geometry as dicts (empty for ds1)."""
    return [dict(zip(COLUMNS, row)) for row in PUBLISHED.get(geometry, [])]
