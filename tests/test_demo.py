"""The main job (make demo) end to end on a few stand-in showers, as a user runs it."""

import pytest

from conftest import run_module


@pytest.mark.slow
def test_demo_runs_and_resumes(tmp_path):
    sets = [f"run.dir={tmp_path}/run", f"data.inputs=[{tmp_path}/standin.hdf5]", f"data.store={tmp_path}/s.zarr",
            "data.standin.n=160", "data.standin.workers=1", "data.batch_size=8"]
    args = ["--config", "configs/smoke.yaml"] + [x for s in sets for x in ("--set", s)]
    first = run_module("pipeline.demo", *args)
    assert first.returncode == 0, first.stderr
    assert "simulating 160 stand-in ds3 showers" in first.stdout
    assert "streamed train:" in first.stdout and "streamed validation:" in first.stdout
    assert "[demo] trained: step 3" in first.stdout and (tmp_path / "run" / "DONE.json").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "standin.hdf5").is_file()
    again = run_module("pipeline.demo", *args)
    assert again.returncode == 0 and "simulating" not in again.stdout and "already complete" in again.stdout
    bad = run_module("pipeline.demo", *args, "--set", "data.batch_size=zero")
    assert bad.returncode == 1 and "data.batch_size: expected an integer" in bad.stderr
