"""benchmarks/gpu_check.py: the GPU node's check command runs its real code paths on tiny shapes (--cpu-smoke), so
it cannot rot between GPU runs; its results survive a slow, failing or killed item; its FLOP counts and peaks."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from train_runs import clean_env

from pipeline.config import Config
from pipeline.generation.blocks import auto_batch_size, largest_divisor
from pipeline.tools.info import model_info

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402


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
        assert "error" not in r and r["batch"] == 4 and r["seconds"] > 0
        # timings are measured, not asserted: CPU timing ratios flake under a loaded CI machine
        assert r["network_ms_per_shower"] > 0 and 0 <= r["not_network_share"] < 1
        expected_share = max(0.0, 1 - r["network_ms_per_shower"] / r["ms_per_shower"])
        assert r["not_network_share"] == pytest.approx(expected_share)
    assert [t["model"] for t in report["training"]] == ["unet:tiny", "transformer:tiny"]
    for train in report["training"]:
        assert "error" not in train and train["showers_per_s"] > 0 and train["tflops"] > 0
        assert train["mfu"] is None and train["hfu"] is None  # no peak for a CPU
    layout = report["layout"]  # where the U-Net loses channels_last_3d depends on the device's kernels
    assert [r["model"] for r in layout] == ["unet:tiny"] and layout[0]["applies"]
    assert layout[0]["modules_kept"] > 0 and isinstance(layout[0]["leaves_that_lose_it"], list)
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.index("showers/s") < md.index("| unet:tiny | 1 | off | off | 4 |") and "| transformer:tiny | 2 |" in md
    assert "channels_last_3d, unet:tiny: " in md


def test_results_are_on_disk_after_every_item_and_survive_errors_and_the_budget(tmp_path):
    res = gpu_check.Results(tmp_path, {"environment": gpu_check.environment(torch.device("cpu")), "geometry": "ds2",
                                       "precision": "fp32", "noise": {"showers_per_s": 1.0, "max_abs_diff_vs_cpu": 0.0},
                                       "training": [], "generation": []}, time.monotonic() + 30)

    def on_disk() -> list[dict]:
        return json.loads((tmp_path / "gpu_check.json").read_text())["training"]

    def first() -> dict:
        return {"batch": 1, "showers_per_s": 2.0, "tflops": 1.0, "hardware_tflops": 1.0, "mfu": None, "hfu": None,
                "peak_memory_gb": None, "implicit_syncs_per_step": None}

    def fails() -> dict:
        assert on_disk()[0]["showers_per_s"] == 2.0  # the first item was saved before this one started
        raise AssertionError("deepspeed: a bucket assertion")

    assert res.attempt("training", {"model": "a"}, first)
    assert not res.attempt("training", {"model": "b"}, fails)
    assert not res.attempt("training", {"model": "c"}, first, needs_s=3600)  # would overrun the budget
    rows = on_disk()
    assert rows[1]["error"] == "AssertionError: deepspeed: a bucket assertion" and rows[1]["seconds"] >= 0
    assert rows[2]["skipped"].startswith("time budget") and "showers_per_s" not in rows[2]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| b | AssertionError: deepspeed: a bucket assertion |" in md and "| c | time budget" in md


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H100 NVL", 835.0), ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0),
                                        ("NVIDIA GH200 480GB", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA A10", 125.0), ("Tesla T4", None)])
def test_bf16_peak_tells_the_variants_apart(name, peak):
    assert gpu_check.bf16_peak_tflops(name) == peak


def test_mfu_counts_three_forward_passes_and_hfu_four_with_checkpointing():
    for checkpointing in (False, True):
        cfg = gpu_check.model_config("transformer:large" if checkpointing else "transformer:base")
        assert cfg.model.checkpointing is checkpointing
        forward = sum(n["flops"] for n in model_info(cfg).values()) * 10.0 / 1e12
        flops = gpu_check.training_flops(cfg, 10.0)
        assert flops["tflops"] == pytest.approx(3 * forward)
        assert flops["hardware_tflops"] == pytest.approx((4 if checkpointing else 3) * forward)


def test_generation_batches_divide_the_shard_rows():
    assert [largest_divisor(512, k) for k in (1, 64, 100, 511, 512, 4096)] == [1, 64, 64, 256, 512, 512]
    assert largest_divisor(96, 64) == 48 and largest_divisor(7, 64) == 7
    assert auto_batch_size(None, torch.device("cpu"), "fp32", 96) == 48  # type: ignore[arg-type]
    assert Config().generate.block_size % Config().generate.layout.shard_rows == 0
