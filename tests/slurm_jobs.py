"""Helpers of the tests that submit real SLURM jobs (tests/test_slurm_cluster.py and
tests/test_slurm_multinode.py): why no cluster answers, ``sbatch`` with a clean environment, and a
handle on a job that polls ``sacct``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_module

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED")
CPU_JOB = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
           "--time=20"]
# the launcher variables of an enclosing job or torchrun must not leak into the test jobs
# (SLURM_CONF stays: it may be how this machine's clients find the cluster)
_LEAKY = re.compile(r"^(SLURM_(?!CONF$)|SBATCH_|SRUN_|SALLOC_|PMI_|OMPI_|PMIX_)|"
                    r"^(RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|MASTER_ADDR|MASTER_PORT|"
                    r"CONFIG|STAGE|CALO_.*)$")


def run_cmd(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run a command, capturing its text output."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def clean_env() -> dict[str, str]:
    """This process's environment without the launcher variables of an enclosing job."""
    return {k: v for k, v in os.environ.items() if not _LEAKY.search(k)}


def cluster_unavailable() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    missing = [c for c in ("sinfo", "sbatch", "sacct", "scancel", "scontrol")
               if shutil.which(c) is None]
    if missing:
        return (f"no SLURM client commands ({', '.join(missing)}); "
                "start a local cluster: bash tests/slurm/cluster.sh up")
    try:
        nodes = run_cmd("sinfo", "-h", "-o", "%T", timeout=5)
        acct = run_cmd("sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID", timeout=10)
    except subprocess.TimeoutExpired as err:
        return (f"SLURM does not answer ({' '.join(err.cmd)} timed out); "
                "see bash tests/slurm/cluster.sh status")
    if nodes.returncode:
        return f"sinfo failed: {nodes.stderr.strip()[:300]} (bash tests/slurm/cluster.sh status)"
    states = nodes.stdout.split()
    if not any(s in ("idle", "mixed", "allocated", "completing") for s in states):
        return (f"no usable SLURM node (sinfo states: {states or 'none'}); "
                "see bash tests/slurm/cluster.sh status")
    if acct.returncode:
        return f"sacct does not work (no slurmdbd?): {acct.stderr.strip()[:300]}"
    return None


@dataclass
class SlurmJob:
    """A submitted batch job: its id and log; ``wait`` polls sacct until a final state."""

    id: str
    log: Path
    name: str

    def state(self) -> str:
        out = run_cmd("sacct", "-j", self.id, "-X", "-n", "-P", "-o", "State").stdout.split("\n")
        # "CANCELLED by 0" -> CANCELLED
        return out[0].split()[0] if out and out[0].strip() else "UNKNOWN"

    def history(self) -> list[str]:
        """States of every run of the job, requeued ones included (sacct --duplicates)."""
        out = run_cmd("sacct", "-j", self.id, "-X", "-n", "-P", "-D", "-o", "State").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def text(self) -> str:
        return (self.log.read_text(errors="replace") if self.log.exists()
                else f"(no log {self.log} yet)")

    def describe(self) -> str:
        return (f"job {self.id} ({self.name}) states {self.history()}\n"
                f"----- log {self.log}\n{self.text()[-6000:]}\n-----")

    def wait(self, timeout: float = 600, expect: str | None = "COMPLETED") -> str:
        """Poll until a final state (cancelling the job after ``timeout`` s); fail with the log
        unless ``expect``."""
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            state = self.state()
            if state in FINAL_STATES:
                break
            time.sleep(1)
        else:
            run_cmd("scancel", self.id)
            pytest.fail(f"timed out after {timeout:.0f} s in state {state}: {self.describe()}")
        if expect is not None and state != expect:
            pytest.fail(f"expected {expect}, got {state}: {self.describe()}")
        print(self.describe())
        return state

    def cancel_if_running(self) -> None:
        if self.state() not in FINAL_STATES:
            run_cmd("scancel", self.id)


def slurm_job(script: Path | str, *args: str, sbatch: list[str] = (), env: dict | None = None,
              cwd: Path, name: str = "calo-test") -> SlurmJob:
    """``sbatch`` a script (from ``cwd``) with a clean environment plus ``env``; the log goes to
    ``cwd``."""
    log = Path(cwd) / f"{name}-%j.out"
    out = subprocess.run(["sbatch", "--parsable", f"--job-name={name}", f"--output={log}", *sbatch,
                          str(script), *args],
                         capture_output=True, text=True, timeout=30, cwd=cwd,
                         env={**clean_env(), **(env or {})})
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    job_id = out.stdout.strip().split(";")[0]
    return SlurmJob(job_id, Path(str(log).replace("%j", job_id)), name)


def smoke_env(standin: dict, run_dir: Path, *extra: str) -> dict:
    """CONFIG and CALO_SET of a smoke training run on the stand-in ``standin`` (its hdf5 and
    store)."""
    sets = [f"run.dir={run_dir}", f"data.inputs=[{standin['hdf5']}]",
            f"data.store={standin['store']}", *extra]
    return {"CONFIG": "configs/smoke.yaml", "CALO_SET": " ".join(sets)}


def make_standin(root: Path) -> dict:
    """256 stand-in ds3 showers in ``root`` and their zarr store, made directly (not through
    SLURM): ``{"root", "hdf5", "store"}``."""
    hdf5, store = root / "standin_ds3.hdf5", root / "showers.zarr"
    out = run_module("data_tools.simulate", "--geometry", "ds3", "--n", "256", "--out", str(hdf5),
                     "--seed", "1", "--quiet")
    assert out.returncode == 0, out.stderr
    out = run_module("data_tools.convert", str(hdf5), "--geometry", "ds3", "--out", str(store),
                     "--chunk-rows", "16", "--shard-rows", "64", "--validation-fraction", "0.125",
                     "--quiet")
    assert out.returncode == 0, out.stderr
    return {"root": root, "hdf5": hdf5, "store": store}
