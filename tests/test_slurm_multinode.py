"""The pipeline across the compute nodes of ``bash tests/slurm/cluster.sh up --nodes 3``: each node
its own hostname, address, /tmp and /dev/shm (tests/slurm/README.md); the shared filesystem is the
machine's, so the tests work in ``<cluster state dir>/shared``, which every node sees.

CI runs the two-node training equality and the lost-node training test; ``CALO_SLURM_FULL=1`` adds
a SIGUSR1 requeue on two nodes, a rank killed on the other node, generation across nodes (with a
crashed node) and through the launch DAG, the per-node state and the MPI conversion across nodes
(docs/reliability.md has the timings).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_jobs import (
    FINAL_STATES,
    SlurmJob,
    clean_env,
    cluster_unavailable,
    make_standin,
    run_cmd,
    slurm_job,
    smoke_env,
)

from pipeline.data.run_layout import sample_blocks_dir

from conftest import REPO, run_module, tree_bytes

NODES = 3  # cluster.sh up --nodes 3: two-node jobs, and a third node for a requeue after a lost one
ON_NODES = ["--partition=nodes", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20"]
TRAIN = ("train.max_steps=5", "train.validation.every_steps=0", "train.monitor.every_steps=0")
FULL = os.environ.get("CALO_SLURM_FULL") == "1"
full_set = pytest.mark.skipif(not FULL, reason="the full multi-node set: CALO_SLURM_FULL=1")


def _unavailable() -> str | None:
    reason = cluster_unavailable()
    if reason:
        return reason
    out = run_cmd("sinfo", "-h", "-p", "nodes", "-N", "-o", "%N %T", timeout=10).stdout.split("\n")
    usable = [ln for ln in out if re.search(r" (idle|mixed|allocated|completing)$", ln)]
    if len(usable) < NODES:
        return (f"{len(usable)} usable nodes in partition 'nodes', {NODES} needed: "
                f"bash tests/slurm/cluster.sh up --nodes {NODES}")
    return None


_REASON = _unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_REASON is not None,
                                                   reason=f"no multi-node cluster: {_REASON}")]


def cluster_dir() -> Path:
    """The cluster's state directory (the parent of its StateSaveLocation)."""
    out = run_cmd("scontrol", "show", "config").stdout
    return Path(re.search(r"^StateSaveLocation\s*=\s*(\S+)", out, re.M).group(1)).parent


def hostnames(nodelist: str) -> list[str]:
    return run_cmd("scontrol", "show", "hostnames", nodelist).stdout.split()


def job_nodes(job: SlurmJob) -> list[str]:
    """The nodes of the job's latest run."""
    out = run_cmd("sacct", "-j", job.id, "-X", "-n", "-P", "-o", "NodeList").stdout.split()
    return hostnames(out[-1]) if out else []


def node_processes(node: str) -> list[int]:
    """PIDs in the node's network namespace (its slurmd and the job processes it started)."""
    out = run_cmd("ip", "netns", "pids", f"calo-{node}").stdout.split()
    return [int(p) for p in out]


def wait_for(what: str, check, timeout: float, job: SlurmJob | None = None) -> float:
    """Poll ``check()`` until true; return the seconds it took (fail with the job's log after
    ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            log = f"\n{job.describe()}" if job else ""
            pytest.fail(f"{what}: not within {timeout:.0f} s{log}")
        time.sleep(1)
    return time.monotonic() - start


def logged_step(run: Path, step: int) -> bool:
    """Whether the run's metrics.csv has its training row of ``step``."""
    metrics = run / "logs" / "metrics.csv"
    return metrics.exists() and re.search(rf"^{step},train,", metrics.read_text(), re.M) is not None


def on_two_nodes(job: SlurmJob) -> None:
    """Wait until sacct shows the job's latest run on two nodes (it may lag the final state)."""
    wait_for("two nodes in sacct", lambda: len(set(job_nodes(job))) == 2, 30, job)


def block_markers(sample: Path) -> list[dict]:
    """The finished-block markers of a generated sample."""
    return [json.loads(p.read_text()) for p in sample_blocks_dir(sample).glob("block_*.json")]


def requeued_run_ended(job: SlurmJob, timeout: float = 900) -> None:
    """Wait for the end of the run that Slurm started after the first one failed."""
    wait_for("the requeued run", lambda: len(h := job.history()) > 1 and h[-1] in FINAL_STATES,
             timeout, job)


def node_back(node: str) -> None:
    """Return ``node`` to service as an administrator would (ReturnToService=2 alone takes about a
    minute more) and wait until it is idle and nothing of the job that lost it is left there."""
    run_cmd("scontrol", "update", f"nodename={node}", "state=resume")
    wait_for(f"{node} idle again", lambda: run_cmd("sinfo", "-h", "-n", node, "-o", "%T").stdout
             .strip() == "idle", 240)
    wait_for(f"only slurmd left on {node}", lambda: len(node_processes(node)) == 1, 120)


# ------------------------------------------------------------------ shared data
@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A directory on the shared filesystem (not pytest's tmp_path: /tmp is node-local)."""
    root = cluster_dir() / "shared"
    root.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="multinode-", dir=root))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def standin(shared: Path) -> dict:
    return make_standin(shared)


def train(standin: dict, name: str, layout: list[str], *extra: str) -> SlurmJob:
    run = standin["root"] / name
    return slurm_job(REPO / "slurm" / "train_ds3.sh", sbatch=[*ON_NODES, *layout],
                     env=smoke_env(standin, run, *TRAIN, *extra), cwd=standin["root"],
                     name=f"calo-multinode-{name}")


def digests(standin: dict, name: str) -> tuple[str, str, int]:
    done = json.loads((standin["root"] / name / "DONE.json").read_text())
    return done["weights_sha256"], done["ema_sha256"], done["world_size"]


@pytest.fixture(scope="module")
def one_node(standin) -> tuple[str, str, int]:
    """The reference: the same training with its two ranks on one node."""
    job = train(standin, "one_node", ["--nodes=1", "--ntasks-per-node=2"])
    try:
        job.wait(timeout=900)
    finally:
        job.cancel_if_running()
    return digests(standin, "one_node")


# ------------------------------------------------------------------ training
def test_two_nodes_train_as_one_node(standin, one_node, jobs):
    """Two ranks on two hosts (gloo over the bridge, MASTER_ADDR from the node list) give the
    weights and EMA of the same two ranks on one host."""
    two = train(standin, "two_nodes", ["--nodes=2", "--ntasks-per-node=1"])
    jobs.append(two)
    two.wait(timeout=600)
    on_two_nodes(two)
    assert digests(standin, "two_nodes") == one_node


@full_set
def test_a_requeue_on_two_nodes_resumes_exactly(standin, one_node, jobs):
    """SIGUSR1 mid-run (as before the time limit): checkpoint, exit 75, requeue, resume on two
    nodes, to the weights of the uninterrupted run."""
    requeued = train(standin, "requeued", ["--nodes=2", "--ntasks-per-node=1"])
    jobs.append(requeued)
    wait_for("step 2 of the job to requeue", lambda: logged_step(standin["root"] / "requeued", 2)
             or requeued.state() in FINAL_STATES, 600, requeued)
    assert run_cmd("scancel", "--signal=USR1", requeued.id).returncode == 0
    requeued_run_ended(requeued)
    assert requeued.history() == ["REQUEUED", "COMPLETED"], requeued.describe()
    assert "resumed from" in requeued.text(), requeued.describe()
    assert digests(standin, "requeued") == one_node


def test_a_lost_node_fails_the_job_and_the_requeue_finishes_it_identically(standin, one_node,
                                                                          jobs):
    """One node's network goes down mid-training: slurmctld declares it DOWN after SlurmdTimeout
    and ends the job (NODE_FAIL), which Slurm requeues on the nodes left; it resumes from the last
    complete checkpoint to the weights of an uninterrupted run."""
    job = train(standin, "lost_node", ["--nodes=2", "--ntasks-per-node=1"],
                "train.checkpoint_every_steps=1", "train.collective_timeout_minutes=10")
    jobs.append(job)
    latest = standin["root"] / "lost_node" / "checkpoints" / "latest"
    wait_for("checkpoint step 2", lambda: latest.exists() and latest.read_text().strip()
             >= "step_00000002" or job.state() in FINAL_STATES, 600, job)
    lost = job_nodes(job)[-1]  # not the batch host: its srun reports the failure
    subprocess.run(["ip", "-n", f"calo-{lost}", "link", "set", "eth0", "down"], check=True)
    try:
        took = wait_for("NODE_FAIL", lambda: "NODE_FAIL" in job.history(), 180, job)
        assert not (standin["root"] / "lost_node" / "DONE.json").exists(), job.describe()
        print(f"{lost} lost: NODE_FAIL after {took:.0f} s")
        requeued_run_ended(job)
    finally:
        subprocess.run(["ip", "-n", f"calo-{lost}", "link", "set", "eth0", "up"], check=True)
    assert job.history() == ["NODE_FAIL", "COMPLETED"], job.describe()
    assert lost not in job_nodes(job), job.describe()
    assert re.search(r"resumed from step_0000000[2-5]", job.text()), job.describe()
    assert digests(standin, "lost_node") == one_node
    node_back(lost)  # back in service; the orphaned rank it kept while cut off is gone


@full_set
def test_a_rank_killed_on_the_other_node_ends_the_job_at_once(standin, jobs):
    """kill -9 of the rank on the second node: ``srun --kill-on-bad-exit`` ends the whole step
    across hosts in seconds, instead of rank 0 waiting out its 10-minute collective timeout."""
    job = train(standin, "killed_rank", ["--nodes=2", "--ntasks-per-node=1"],
                "train.max_steps=50", "train.collective_timeout_minutes=10")
    jobs.append(job)
    wait_for("step 1", lambda: logged_step(standin["root"] / "killed_rank", 1)
             or job.state() in FINAL_STATES, 600, job)
    other = job_nodes(job)[-1]
    ranks = [p for p in node_processes(other)
             if b"pipeline.train" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(ranks) == 1, ranks
    os.kill(ranks[0], signal.SIGKILL)
    took = wait_for("the job's end", lambda: job.state() in FINAL_STATES, 120, job)
    print(f"rank on {other} killed: job {job.state()} after {took:.0f} s")
    assert job.state() == "FAILED" and "REQUEUED" not in job.history(), job.describe()


# ------------------------------------------------------------------ generation
def assert_same_bytes(store: Path, expected: dict[str, bytes]) -> None:
    """Every file of the zarr store as expected; its zarr.json except the creation time."""
    def undated(raw: bytes) -> dict:
        meta = json.loads(raw)
        meta["attributes"].pop("created")
        return meta

    got = tree_bytes(store)
    assert sorted(got) == sorted(expected), store
    assert undated(got.pop("zarr.json")) == undated(expected["zarr.json"])
    differ = [k for k in got if got[k] != expected[k]]
    assert not differ, f"{store}: {len(differ)} of {len(expected)} files differ: {differ[:8]}"


def generation_env(standin: dict, model_run: Path, out: Path) -> dict:
    """24 showers in 6 seed blocks of 4 (about 2 s per shower on one CPU thread)."""
    return smoke_env(standin, model_run, "generate.model=teacher", "generate.n=24",
                     f"generate.out={out}", f"generate.energies_from={standin['hdf5']}",
                     "generate.block_size=4", "generate.layout.chunk_rows=4",
                     "generate.layout.shard_rows=4")


def calo_sets(env: dict) -> list[str]:
    """CALO_SET as ``--set K=V`` arguments."""
    return [w for kv in env["CALO_SET"].split() for w in ("--set", kv)]


@pytest.fixture(scope="module")
def one_process(standin, one_node) -> dict[str, bytes]:
    """The files of the sample that one process generates directly (one thread, as the srun
    tasks: bitwise the same)."""
    out = standin["root"] / "one_process.zarr"
    env = generation_env(standin, standin["root"] / "one_node", out)
    direct = run_module("pipeline.generate", "--config", "configs/smoke.yaml", *calo_sets(env),
                        timeout=900, env={"OMP_NUM_THREADS": "1"})
    assert direct.returncode == 0, direct.stderr[-3000:]
    return tree_bytes(out)


def generate(standin: dict, model_run: Path, out: Path) -> SlurmJob:
    return slurm_job(REPO / "slurm" / "generate.sh",
                     sbatch=[*ON_NODES, "--nodes=2", "--ntasks-per-node=1"],
                     env=generation_env(standin, model_run, out), cwd=standin["root"],
                     name=f"calo-multinode-{out.stem}")


@full_set
def test_generation_across_nodes_survives_a_crashed_node(standin, one_process, jobs):
    """``sbatch -N 2 slurm/generate.sh``: every seed block once, on both hosts, one finaliser, the
    bytes of a one-process run; a node crashing mid-way (every process of it killed) ends the job
    (NODE_FAIL) and the requeued job finishes the same sample."""
    model, root, expected = standin["root"] / "one_node", standin["root"], one_process

    two = generate(standin, model, root / "two_nodes.zarr")
    jobs.append(two)
    two.wait(timeout=900)
    markers = block_markers(root / "two_nodes.zarr")
    assert sorted(m["block"] for m in markers) == list(range(6)), markers
    assert {m["host"] for m in markers} == set(job_nodes(two)), markers
    assert two.text().count("generate: complete") == 1, two.describe()
    assert_same_bytes(root / "two_nodes.zarr", expected)

    crashed = generate(standin, model, root / "crashed.zarr")
    jobs.append(crashed)
    wait_for("a first finished block", lambda: any((root / "crashed.zarr.blocks").glob("*.json"))
             or crashed.state() in FINAL_STATES, 600, crashed)
    lost = job_nodes(crashed)[-1]
    for pid in node_processes(lost):  # the node "loses power": its slurmd and tasks die at once
        os.kill(pid, signal.SIGKILL)
    try:
        took = wait_for("NODE_FAIL", lambda: "NODE_FAIL" in crashed.history(), 180, crashed)
        print(f"{lost} crashed: NODE_FAIL after {took:.0f} s")
        requeued_run_ended(crashed)
    finally:  # a new slurmd for the crashed node
        subprocess.run(["bash", str(REPO / "tests/slurm/cluster.sh"), "up", "--nodes",
                        str(NODES)], capture_output=True, timeout=300)
    assert crashed.history() == ["NODE_FAIL", "COMPLETED"], crashed.describe()
    assert crashed.text().count("generate: complete") == 1, crashed.describe()
    assert_same_bytes(root / "crashed.zarr", expected)
    node_back(lost)


@full_set
def test_the_launch_dag_generates_on_two_nodes(standin, one_process):
    """``python -m pipeline.launch --executor slurm`` with ``launch.generate.nodes=2``: submitit
    runs the generation stage's two tasks on two hosts; the sample is the one-process sample."""
    out = standin["root"] / "launched.zarr"
    env = generation_env(standin, standin["root"] / "one_node", out)
    launched = run_module("pipeline.launch", "--config", "configs/smoke.yaml", *calo_sets(env),
                          "--executor", "slurm", "--stages", "generate",
                          "--set", "distill.final_steps=8",  # no distillation: the teacher's run
                          "--set", "launch.partition=nodes",
                          "--set", "launch.generate={nodes: 2, tasks_per_node: 1, gpus_per_node: 0,"
                          " cpus_per_task: 1, time_minutes: 10}", timeout=120)
    assert launched.returncode == 0, launched.stderr[-3000:]
    launch = standin["root"] / "one_node" / "launch"
    job_id = json.loads((launch / "jobs.json").read_text())["stages"]["generate"]["job_id"]
    job = SlurmJob(job_id, launch / "logs" / job_id / f"{job_id}_0_log.out", "launch-generate")
    try:
        job.wait(timeout=900)
    finally:
        job.cancel_if_running()
    on_two_nodes(job)
    markers = block_markers(out)
    assert {m["host"] for m in markers} == set(job_nodes(job)), markers
    assert_same_bytes(out, one_process)


# ------------------------------------------------------------------ per-node state, MPI
HOLDER = """
import os, sys
from pipeline.runtime.lock_file import LockFile
assert LockFile(sys.argv[1]).acquire()
os._exit(0)  # dies holding the lock, as a crashed finaliser would
"""
PER_NODE = """
import json, os, socket, sys, time
from pipeline.runtime.errors import DistributedError
from pipeline.runtime.gpu_claim import claim
from pipeline.runtime.lock_file import LockFile
node, local = int(os.environ["SLURM_NODEID"]), int(os.environ["SLURM_LOCALID"])
time.sleep(0.5 * local)  # the first task of each node claims first
try:
    claim("fake-gpu-0", "fake GPU 0")
    gpu = "claimed"
except DistributedError:
    gpu = "in use"
lock = None
if local == 0:
    time.sleep(2.0 * (1 - node))  # the other host (node index 1) asks first
    lock = LockFile(sys.argv[1]).acquire()
print(json.dumps({"host": socket.gethostname(), "gpu": gpu, "lock": lock}), flush=True)
time.sleep(3)  # hold the claims while the other tasks try
"""


def srun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["srun", "--partition=nodes", "--time=5", *args], capture_output=True,
                          text=True, timeout=timeout, env=clean_env(), cwd=REPO)


@full_set
def test_node_local_gpu_claims_and_the_finaliser_lock_across_two_hosts(shared):
    """The GPU claim lives in each node's own /tmp: one claim per node (one per cluster if /tmp
    were shared); a finaliser lock whose holder died is taken over on the holder's host only."""
    python, lock = str(REPO / ".venv" / "bin" / "python"), str(shared / "finalise.lock")
    first, second = hostnames(run_cmd("sinfo", "-h", "-p", "nodes", "-o", "%N").stdout.strip())[:2]
    out = srun(f"--nodelist={first}", "-N1", "-n1", python, "-c", HOLDER, lock)
    assert out.returncode == 0, out.stderr
    assert json.loads(Path(lock).read_text())["host"] == first
    out = srun(f"--nodelist={first},{second}", "-N2", "--ntasks-per-node=2", python, "-c",
               PER_NODE, lock)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    for host in (first, second):
        assert sorted(r["gpu"] for r in rows if r["host"] == host) == ["claimed", "in use"], rows
        assert list((cluster_dir() / "nodes" / host / "tmp").glob("calo-gpu-*-fake-gpu-0.lock"))
    locks = {r["host"]: r["lock"] for r in rows if r["lock"] is not None}
    assert locks == {second: False, first: True}, rows


@full_set
def test_mpi_conversion_across_nodes_writes_the_same_store(standin, jobs):
    """``srun -N 2 --mpi=pmi2 python -m data_tools.convert`` (slurm/convert.sh) over the bridge
    writes the bytes of the one-process conversion."""
    store = standin["root"] / "converted.zarr"
    env = {"CONFIG": "configs/smoke.yaml",
           "CALO_SET": (f"data.inputs=[{standin['hdf5']}] data.store={store} "
                        "data.layout.shard_rows=64")}
    job = slurm_job(REPO / "slurm" / "convert.sh", sbatch=[*ON_NODES, "--nodes=2",
                                                           "--ntasks-per-node=1"],
                    env=env, cwd=standin["root"], name="calo-multinode-convert")
    jobs.append(job)
    job.wait(timeout=600)
    on_two_nodes(job)
    assert job.text().count("convert: wrote 256 showers") == 1, job.describe()
    assert tree_bytes(store) == tree_bytes(standin["store"])
