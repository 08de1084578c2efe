"""benchmarks/gpu_check.py --cpu-smoke: the GPU node's check command runs its real code paths on tiny shapes,
so it cannot rot between GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO
from test_train import clean_env


def test_gpu_check_cpu_smoke_writes_its_report(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path), "--cpu-smoke"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["environment"]["torch"] and report["geometry"] == "ds2"
    assert report["noise"]["showers_per_s"] > 0 and report["noise"]["max_abs_diff_vs_cpu"] == 0.0
    rows = report["generation"]
    assert [(r["model"], r["steps"], r["compile"], r["channels_last"]) for r in rows] == [
        (m, s, False, cl) for m in ("unet:tiny", "transformer:tiny") for s, cl in ((1, False), (2, False), (2, True))]
    for r in rows:
        assert "error" not in r and r["batch"] == 4
        assert 0 < r["network_ms_per_shower"] <= r["ms_per_shower"] * 1.5 and 0 <= r["not_network_share"] < 1
    for first in (0, 3):  # two steps cost more than one, for both backbones
        assert rows[first + 1]["network_ms_per_shower"] > rows[first]["network_ms_per_shower"]
    assert [t["model"] for t in report["training"]] == ["unet:tiny", "transformer:tiny"]
    for train in report["training"]:
        assert "error" not in train and train["showers_per_s"] > 0 and train["tflops"] > 0 and train["mfu"] is None
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| unet:tiny | 1 | off | off | 4 |" in md and "| transformer:tiny | 2 |" in md and "showers/s" in md
