"""The million-shower production path (benchmarks/production_rehearsal.py) at CI size: train a
cheap ds2 model, generate with two ranks, export to several files, verify both, evaluate against a
smaller reference (the streamed path), all through the commands a user types."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_production_path_at_ci_size(tmp_path):
    results = tmp_path / "results.json"
    sets = ["data.standin.n=1500", "evaluate.reference_standin.n=1200", "train.max_steps=6",
            "train.checkpoint_every_steps=3", "generate.block_size=1024",
            "generate.export_rows_per_file=1000", "evaluate.classifier_epochs=2",
            "evaluate.extra_args=[--classifier-max,'1000',--threads,'1']"]
    cmd = [sys.executable, str(REPO / "benchmarks/production_rehearsal.py"),
           "--workdir", str(tmp_path / "w"), "--n", "3000", "--via", "local",
           "--network-showers", "128", "--results", str(results),
           *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "w" / "rehearsal_3000.log").read_text()
    assert proc.returncode == 0, proc.stderr[-3000:] + log[-3000:]
    res = json.loads(results.read_text())["3000_local"]
    gen = res["generate"]
    assert {r: v["blocks"] for r, v in gen["ranks"].items()} == {"0": 2, "1": 1}
    assert sum(v["showers"] for v in gen["ranks"].values()) == 3000
    assert all(v["peak_rss_mb"] > 0 for v in gen["ranks"].values())
    assert res["verify_sample"]["exit_code"] == 0 and res["verify_export"]["exit_code"] == 0
    assert res["disk"]["partial_files_left"] == []
    index = tmp_path / "w" / "files" / "3000" / "generated.files.json"
    files = json.loads(index.read_text())["files"]
    assert [(f["start"], f["stop"]) for f in files] == [(0, 1000), (1000, 2000), (2000, 3000)]
    with h5py.File(index.with_name(files[2]["name"]), "r") as f:
        assert f["showers"].shape == (1000, 6480) and f["incident_energies"].shape == (1000, 1)
    report = json.loads((tmp_path / "w" / "evaluation" / "3000" / "report.json").read_text())
    # features kept for as many showers as the reference has: memory independent of N
    assert report["generated_features_kept"] == 1200
    assert report["separation_power"]["summary"]["etot_einc"]["n_generated"] == 3000
