"""The main job (make demo) end to end on a few stand-in showers, as a user runs it."""

import json

import pytest

from conftest import run_module


@pytest.mark.slow
def test_demo_runs_the_whole_chain_and_resumes(tmp_path):
    sets = [f"run.dir={tmp_path}/run", f"data.inputs=[{tmp_path}/standin.hdf5]",
            f"data.store={tmp_path}/s.zarr", "data.standin.n=160", "data.standin.workers=1",
            "data.global_batch_size=8", f"evaluate.reference={tmp_path}/ref.hdf5",
            f"generate.energies_from={tmp_path}/ref.hdf5", "evaluate.reference_standin.n=48",
            "evaluate.reference_standin.workers=1", "generate.block_size=128",
            "evaluate.classifier_epochs=2"]
    args = ["--config", "configs/smoke.yaml"] + [x for s in sets for x in ("--set", s)]
    first = run_module("pipeline.demo", *args, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert "simulating 160 stand-in ds3 showers" in out and "streamed validation:" in out
    for line in ("trained: 8 sampling steps, 3 optimiser steps",
                 "distilled (stage 1): 4 sampling steps", "distilled (stage 2): 2 sampling steps",
                 "generated: 48 showers with the 2-step model",
                 f"exported: {tmp_path}/run/samples/generated.hdf5",
                 f"evaluated: {tmp_path}/run/evaluation/report.md"):
        assert line in out, out[-3000:]
    report = json.loads((tmp_path / "run" / "evaluation" / "report.json").read_text())
    assert report["inputs"]["generated"]["n"] == 48 and set(report["classifier"]) == {"low", "high"}
    again = run_module("pipeline.demo", *args)
    assert again.returncode == 0 and "simulating" not in again.stdout
    skipped = [line for line in again.stdout.splitlines()
               if line.startswith("[demo]") and "already complete" in line]
    # train, 2 distillation stages, generate, export, evaluate
    assert len(skipped) == 6, again.stdout
    bad = run_module("pipeline.demo", *args, "--set", "data.global_batch_size=zero")
    assert bad.returncode == 1 and "data.global_batch_size: expected an integer" in bad.stderr
