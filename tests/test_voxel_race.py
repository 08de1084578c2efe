"""benchmarks/voxel_race.py: gathering runs into the race table, resuming from the results."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import voxel_race  # noqa: E402


def fake_run(path, auc_low, auc_high, etot, minutes):
    """A finished run directory as benchmarks/fidelity.py leaves it."""
    path.mkdir(parents=True)
    fidelity = {"ms_per_shower": 20.0, "fpd": 4.0, "etot_einc": etot, "e_layer": 0.02,
                "width_x": 0.01, "sparsity": 0.005,
                "by_generation_seed": [{"auc_low_runs": auc_low, "auc_high_runs": auc_high}]}
    result = {"stages": [{"stage": 0, "steps": 3000, "run_dir": str(path), "fidelity": fidelity}],
              "curve": [{"step": "0", "classifier_auc": "1.0", "etot_einc": "0.9"}]}
    (path / voxel_race.RESULT).write_text(json.dumps(result))
    (path / "logs").mkdir()
    (path / "logs" / "metrics.csv").write_text(f"step,elapsed_s\n3000,{60 * minutes}\n")


def test_the_table_pools_seeds_and_classifier_runs(tmp_path, monkeypatch):
    fake_run(tmp_path / "baseline" / "seed0", [0.70, 0.72, 0.71], [0.85, 0.86, 0.84], 0.03, 10)
    fake_run(tmp_path / "baseline" / "seed1", [0.74, 0.73, 0.75], [0.88, 0.87, 0.86], 0.05, 12)
    fake_run(tmp_path / "min_snr" / "seed0", [0.65, 0.66, 0.64], [0.80, 0.81, 0.79], 0.02, 11)
    rows = voxel_race.gather(voxel_race.collect(tmp_path, {}))
    assert list(rows) == ["baseline", "min_snr"]
    base = rows["baseline"]
    lows = [0.70, 0.72, 0.71, 0.74, 0.73, 0.75]
    assert base["seeds"] == 2 and base["auc_low_runs"] == 6 and base["train_minutes"] == 11
    assert base["auc_low"] == pytest.approx(np.mean(lows))
    assert base["auc_low_std"] == pytest.approx(np.std(lows, ddof=1))
    assert base["etot_einc"] == pytest.approx(0.04)
    assert base["etot_einc_std"] == pytest.approx(np.std([0.03, 0.05], ddof=1))
    assert rows["min_snr"]["etot_einc_std"] is None  # one seed: no spread
    assert rows["min_snr"]["overrides"] == ["diffusion.voxel_training.weighting=min_snr"]
    table = voxel_race.table(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| baseline | - | 2 | 3000 | 11.0 | 0.725 +- ")


def test_runs_in_the_results_file_are_kept_and_not_raced_again(tmp_path, monkeypatch):
    fake_run(tmp_path / "old" / "baseline" / "seed0", [0.7] * 3, [0.8] * 3, 0.03, 10)
    done = voxel_race.collect(tmp_path / "old", {})
    started = []
    monkeypatch.setattr(voxel_race.subprocess, "run",
                        lambda cmd, **k: started.append(cmd) or argparse.Namespace(returncode=0))
    voxel_race.race_one(tmp_path / "new", "baseline", 0, 3000, 1, done)
    assert started == []  # a fresh work directory: the committed run is not redone
    voxel_race.race_one(tmp_path / "new", "baseline", 1, 3000, 1, done)
    assert len(started) == 1 and f"run.dir={tmp_path}/new/baseline/seed1" in started[0]
    runs = voxel_race.collect(tmp_path / "new", done)
    assert list(runs) == ["baseline/seed0"] and voxel_race.gather(runs)["baseline"]["seeds"] == 1
