"""Integration tests of the slurm/ scripts on a real SLURM cluster
(``bash tests/slurm/cluster.sh up``).

Skipped, with the reason, when no cluster answers. The jobs run the smoke config on CPU: 2 tasks on
one node, ``--gpus-per-node=0`` overriding the scripts' GPU defaults. About 5 minutes in all on 2
cores (more when other jobs occupy the cluster: waits allow for queueing).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from slurm_jobs import (
    CPU_JOB,
    FINAL_STATES,
    SlurmJob,
    cluster_unavailable,
    make_standin,
    run_cmd,
    slurm_job,
    smoke_env,
)

from conftest import REPO, tree_bytes

_REASON = cluster_unavailable()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_REASON is not None, reason=f"no SLURM cluster: {_REASON}")]


# ------------------------------------------------------------------ data and the smoke training run
@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> dict:
    """Stand-in ds3 showers and their zarr store, made directly (not through SLURM)."""
    return make_standin(tmp_path_factory.mktemp("slurm_data"))


@pytest.fixture(scope="module")
def smoke_run(standin, tmp_path_factory) -> tuple[SlurmJob, Path]:
    """``sbatch slurm/train_ds3.sh`` with the smoke config, 2 CPU tasks, submitted from outside the
    repository."""
    cwd = tmp_path_factory.mktemp("slurm_train")
    run_dir = cwd / "run"
    job = slurm_job(REPO / "slurm" / "train_ds3.sh", sbatch=CPU_JOB,
                    env=smoke_env(standin, run_dir), cwd=cwd, name="calo-test-train")
    try:
        job.wait(timeout=900, expect=None)
    finally:
        job.cancel_if_running()
    return job, run_dir


# ------------------------------------------------------------------ tests
def test_train_script_runs_smoke_config(smoke_run):
    job, run_dir = smoke_run
    assert job.state() == "COMPLETED", job.describe()
    done = json.loads((run_dir / "DONE.json").read_text())
    assert done["status"] == "done" and done["step"] == 3, done
    assert done["world_size"] == 2 and done["launcher"] == "slurm", done
    assert "job step exited with code 0" in job.text()


def test_requeue_on_sigusr1_resumes_bit_identically(standin, tmp_path, jobs):
    """SIGUSR1 to the job steps mid-run: checkpoint, exit 75, requeue, resume; same weights as no
    interruption."""
    extra = ("train.max_steps=5", "train.checkpoint_every_steps=0",
             "train.validation.every_steps=0")
    interrupted = slurm_job(REPO / "slurm" / "train_ds3.sh", sbatch=CPU_JOB, cwd=tmp_path,
                            name="calo-test-requeue",
                            env=smoke_env(standin, tmp_path / "interrupted", *extra))
    jobs.append(interrupted)
    reference = slurm_job(REPO / "slurm" / "train_ds3.sh", sbatch=CPU_JOB, cwd=tmp_path,
                          name="calo-test-reference",
                          env=smoke_env(standin, tmp_path / "reference", *extra))
    jobs.append(reference)

    metrics = tmp_path / "interrupted" / "logs" / "metrics.csv"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and re.search(r"^2,train,", metrics.read_text(), re.M)):
        assert time.monotonic() < deadline, f"no step 2 within 600 s: {interrupted.describe()}"
        assert interrupted.state() not in FINAL_STATES, (
            f"ended before step 2: {interrupted.describe()}")
        time.sleep(0.5)
    # the design of slurm/env.sh: --signal=USR1@N (no B:) signals the job steps, as scancel does
    # by default
    out = run_cmd("scancel", "--signal=USR1", interrupted.id)
    assert out.returncode == 0, out.stderr

    interrupted.wait(timeout=600)
    reference.wait(timeout=600)
    assert interrupted.history() == ["REQUEUED", "COMPLETED"], interrupted.describe()
    log = interrupted.text()
    assert ("job requeued" in log and "(restart 1)" in log
            and "resumed from" in log), interrupted.describe()
    assert "resumed from" not in reference.text()
    done = json.loads((tmp_path / "interrupted" / "DONE.json").read_text())
    ref = json.loads((tmp_path / "reference" / "DONE.json").read_text())
    assert done["step"] == ref["step"] == 5
    assert done["weights_sha256"] == ref["weights_sha256"]
    assert done["ema_sha256"] == ref["ema_sha256"]


def task_pid(job_id: str, rank: int, module: str) -> int | None:
    """PID of the ``python -m <module>`` process of task ``rank`` of a job on this node (read from
    /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(kv.split("=", 1)
                       for kv in (proc / "environ").read_text(errors="replace").split("\0")
                       if "=" in kv)
        except (OSError, ValueError):
            continue
        if (module.encode() in cmdline and env.get("SLURM_JOB_ID") == job_id
                and env.get("SLURM_PROCID") == str(rank)):
            return int(proc.name)
    return None


def test_a_killed_rank_ends_the_job_at_once_and_a_rerun_resumes(standin, tmp_path, jobs):
    """kill -9 one of two training ranks: srun --kill-on-bad-exit ends the step at once (the
    surviving rank would otherwise wait out the 10-minute collective timeout set here); the same
    command resumes."""
    extra = ("train.max_steps=12", "train.checkpoint_every_steps=2",
             "train.validation.every_steps=0", "train.collective_timeout_minutes=10")
    env = smoke_env(standin, tmp_path / "run", *extra)
    job = slurm_job(REPO / "slurm" / "train_ds3.sh", sbatch=CPU_JOB, cwd=tmp_path,
                    name="calo-test-kill", env=env)
    jobs.append(job)
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    while not (latest.exists() and latest.read_text().strip() >= "step_00000002"):
        assert time.monotonic() < deadline and job.state() not in FINAL_STATES, job.describe()
        time.sleep(0.5)
    pid = task_pid(job.id, 1, "pipeline.train")
    assert pid is not None, job.describe()
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    state = job.wait(timeout=300, expect=None)
    assert time.monotonic() - killed_at < 120, (
        f"the job took {time.monotonic() - killed_at:.0f} s to end")
    assert state == "FAILED" and not (tmp_path / "run" / "DONE.json").exists(), job.describe()
    saved = latest.read_text().strip()

    again = slurm_job(REPO / "slurm" / "train_ds3.sh", sbatch=CPU_JOB, cwd=tmp_path,
                      name="calo-test-kill-rerun", env=env)
    jobs.append(again)
    again.wait(timeout=600)
    assert f"resumed from {saved}" in again.text(), again.describe()
    assert json.loads((tmp_path / "run" / "DONE.json").read_text())["step"] == 12


STUB = """
import os, pathlib, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
print(f"stub rank {os.environ['SLURM_PROCID']}: restart count {restart}", flush=True)
if restart:
    sys.exit(0)
pathlib.Path(sys.argv[1]).touch()
for _ in range(1200):
    if got:
        print("stub: SIGUSR1, exiting 75", flush=True)
        sys.exit(75)
    time.sleep(0.1)
sys.exit(1)
"""


@pytest.mark.parametrize("scancel, final, requeued", [
    # --signal=B:USR1@N style: the batch shell forwards it
    (["--batch", "--signal=USR1"], "COMPLETED", True),
    # plain scancel (SIGTERM): the job stops and is not requeued
    ([], "CANCELLED", False),
], ids=["usr1-to-batch-shell", "scancel"])
def test_run_requeueable_signal_handling(tmp_path, jobs, scancel, final, requeued):
    (tmp_path / "stub.py").write_text(STUB)
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH --ntasks=2 --cpus-per-task=1 --time=5 --requeue --open-mode=append
export CALO_REPO={REPO}
source "$CALO_REPO/slurm/env.sh"
run_requeueable "${{SRUN[@]}}" "$PYTHON" {tmp_path}/stub.py {tmp_path}/ready.$SLURM_JOB_ID
""")
    job = slurm_job(script, cwd=tmp_path, name="calo-test-signal")
    jobs.append(job)
    deadline = time.monotonic() + 600  # the cluster may be busy with other jobs
    while not (tmp_path / f"ready.{job.id}").exists():
        assert time.monotonic() < deadline and job.state() not in FINAL_STATES, job.describe()
        time.sleep(0.2)
    assert run_cmd("scancel", *scancel, job.id).returncode == 0
    job.wait(timeout=120, expect=final)
    assert ("REQUEUED" in job.history()) == requeued, job.describe()
    if requeued:
        assert "forwarding it to the job step" in job.text() and "restart count 1" in job.text()
    else:
        assert "batch step received SIGTERM" in job.text() and "job requeued" not in job.text()


ONE_TASK_ENDS = """
import os, sys, time
from pipeline.runtime.signals import run_main, write_requeue_marker
rank, restart, how = (int(os.environ["SLURM_PROCID"]),
                      int(os.environ.get("SLURM_RESTART_COUNT", "0")), sys.argv[1])
print(f"stub rank {rank}: restart count {restart}", flush=True)
if restart or rank == 0:
    time.sleep(0 if restart else 600)  # rank 0 would sit in a collective; srun must end it
    sys.exit(0)
# rank 1: stops resumably (writes the marker) or crashes
run_main(lambda: 75 if how == "stop" else 3)
"""


@pytest.mark.parametrize("how, final, requeued", [("crash", "FAILED", False),
                                                  ("stop", "COMPLETED", True)])
def test_one_task_ending_ends_the_step_and_the_marker_decides_the_requeue(tmp_path, jobs, how,
                                                                          final, requeued):
    """srun --kill-on-bad-exit (slurm/env.sh) ends the step as soon as one task exits non-zero,
    instead of leaving the others until the collective timeout; srun's exit code then reflects the
    killed task (137), so a stop is recognised by the requeue marker the stopping task wrote."""
    (tmp_path / "stub.py").write_text(ONE_TASK_ENDS)
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH --ntasks=2 --cpus-per-task=1 --time=15 --requeue --open-mode=append
export CALO_REPO={REPO}
source "$CALO_REPO/slurm/env.sh"
run_requeueable "${{SRUN[@]}}" "$PYTHON" {tmp_path}/stub.py {how}
""")
    started = time.monotonic()
    job = slurm_job(script, cwd=tmp_path, name=f"calo-test-{how}")
    jobs.append(job)
    job.wait(timeout=300, expect=final)
    assert time.monotonic() - started < 200, job.describe()  # not the 600 s rank 0 sleeps
    assert ("REQUEUED" in job.history()) == requeued, job.describe()
    if requeued:
        assert ("a task stopped resumably" in job.text()
                and "restart count 1" in job.text()), job.describe()
    assert not list((REPO / ".slurm-state").glob(f"requeue.{job.id}")), "the marker is consumed"


def test_generate_array_then_export(smoke_run, standin, jobs):
    """generate.sh as a 2-element job array (each element one rank), then export.sh after it
    (afterok)."""
    train, run_dir = smoke_run
    assert train.state() == "COMPLETED", train.describe()
    # 2 blocks of 4 showers (~2 s per shower on one CPU thread)
    env = smoke_env(standin, run_dir, "generate.model=teacher", "generate.n=8",
                    f"generate.energies_from={standin['hdf5']}", "generate.block_size=4",
                    "generate.layout.chunk_rows=4", "generate.layout.shard_rows=4")
    cwd = run_dir.parent
    gen = slurm_job(REPO / "slurm" / "generate.sh",
                    sbatch=["--array=0-1", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0",
                            "--cpus-per-task=1", "--time=10"],
                    env=env, cwd=cwd, name="calo-test-generate")
    jobs.append(gen)
    export = slurm_job(REPO / "slurm" / "export.sh",
                       sbatch=[f"--dependency=afterok:{gen.id}", "--cpus-per-task=1", "--time=10"],
                       env=env, cwd=cwd, name="calo-test-export")
    jobs.append(export)
    export.wait(timeout=600)
    for element in ("0", "1"):
        state = run_cmd("sacct", "-j", f"{gen.id}_{element}", "-X", "-n", "-P",
                     "-o", "State").stdout.split()
        assert state == ["COMPLETED"], (element, state)
    logs = "".join(p.read_text() for p in cwd.glob("calo-test-generate-*.out"))
    assert "--rank 0 --world-size 2" in logs and "--rank 1 --world-size 2" in logs, logs
    sample = run_dir / "samples" / "generated.zarr"
    assert (sample.parent / "generated.zarr.manifest.json").is_file(), logs
    assert (run_dir / "samples" / "generated.hdf5").is_file(), export.describe()


def test_convert_script_with_mpi_ranks(standin, tmp_path, jobs):
    """convert.sh: 2 MPI ranks (srun --mpi=pmi2) write the same store as the direct conversion."""
    store = tmp_path / "showers.zarr"
    env = {"CONFIG": "configs/smoke.yaml",
           "CALO_SET": (f"data.inputs=[{standin['hdf5']}] data.store={store} "
                        "data.layout.shard_rows=64")}
    job = slurm_job(REPO / "slurm" / "convert.sh",
                    sbatch=["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10"],
                    env=env, cwd=tmp_path, name="calo-test-convert")
    jobs.append(job)
    job.wait(timeout=600)
    # without a working PMI each task would be a rank 0 of 1, converting (and reporting) everything
    # itself
    assert job.text().count("convert: wrote 256 showers") == 1, job.describe()
    assert tree_bytes(store) == tree_bytes(standin["store"])


def test_bad_config_fails_fast(tmp_path, jobs):
    job = slurm_job(REPO / "slurm" / "train_ds3.sh", sbatch=CPU_JOB, cwd=tmp_path,
                    name="calo-test-badconfig", env={"CONFIG": "configs/does-not-exist.yaml"})
    jobs.append(job)
    job.wait(timeout=120, expect="FAILED")
    assert "CONFIG=configs/does-not-exist.yaml not found" in job.text()
    assert "2:0" in run_cmd("sacct", "-j", job.id, "-X", "-n", "-o", "ExitCode").stdout
