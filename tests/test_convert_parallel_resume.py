"""Conversion killed with SIGKILL and re-run, and under mpirun -n 2: same bytes as a plain run."""

import signal
import subprocess
import sys
import time

import pytest

from data_tools.convert import convert
from pipeline.config import StoreLayout
from pipeline.data.shower_store import ShowerStore, StoreError

from conftest import REPO, find_mpirun, run_module, tree_bytes, write_random_showers

ARGS = ["--geometry", "ds3", "--chunk-rows", "8", "--shard-rows", "16", "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An input file and its uninterrupted single-process conversion."""
    d = tmp_path_factory.mktemp("ref")
    src = d / "in.hdf5"
    write_random_showers(src, 400, "ds3", seed=5)
    ref = convert([src], d / "ref.zarr", "ds3", layout=StoreLayout(8, 16), progress=False)
    return src, tree_bytes(ref)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_shards", [1, 12])
def test_killed_conversion_resumes_to_identical_store(tmp_path, reference, kill_after_shards):
    src, ref_bytes = reference
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "data_tools.convert", str(src), "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = len(list((out / "_conversion").glob("shard_*.json"))) if (out / "_conversion").is_dir() else 0
        if done >= kill_after_shards or proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "conversion finished before it could be killed; make the input larger"
    with pytest.raises(StoreError, match="incomplete"):
        ShowerStore(out)
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert tree_bytes(out) == ref_bytes


@pytest.mark.slow
@pytest.mark.mpi
def test_two_rank_mpi_conversion_matches_single_process(tmp_path, reference):
    mpirun = find_mpirun()
    if mpirun is None:
        pytest.skip("no mpirun on PATH or beside the interpreter (pip install mpich mpi4py)")
    pytest.importorskip("mpi4py")
    src, ref_bytes = reference
    out = tmp_path / "mpi.zarr"
    proc = subprocess.run([mpirun, "-n", "2", sys.executable, "-m", "data_tools.convert", str(src), "--out", str(out), *ARGS],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree_bytes(out) == ref_bytes


@pytest.mark.slow
@pytest.mark.mpi
def test_mpi_error_on_one_rank_fails_the_job_cleanly(tmp_path):
    mpirun = find_mpirun()
    if mpirun is None:
        pytest.skip("no mpirun")
    pytest.importorskip("mpi4py")
    proc = subprocess.run([mpirun, "-n", "2", sys.executable, "-m", "data_tools.convert", str(tmp_path / "missing.hdf5"),
                           "--out", str(tmp_path / "x.zarr"), *ARGS], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "missing.hdf5: no such file" in proc.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_srun_without_mpi_plugin_is_detected(tmp_path):
    """srun tasks that do not form one MPI job would each convert everything: refuse instead."""
    pytest.importorskip("mpi4py")
    src = tmp_path / "in.hdf5"
    write_random_showers(src, 10, "ds3")
    proc = run_module("data_tools.convert", str(src), "--out", str(tmp_path / "x.zarr"), *ARGS,
                      env={"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"})
    assert proc.returncode == 2
    assert "srun --mpi=pmi2" in proc.stderr
