"""pipeline.runtime.distributed: rank discovery from each launcher (faked), node lists, and real
2-rank training under mpirun and under SLURM variables as srun sets them."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from train_runs import (
    LAUNCH_PREFIXES,
    LAUNCH_VARIABLES,
    clean_env,
    run_group,
    run_train,
    train_cmd,
    write_config,
)

from pipeline.data.run_record import read_record
from pipeline.runtime import distributed
from pipeline.runtime.distributed import (
    DistributedError,
    discover,
    export,
    parse_nodelist,
    port_from_job_id,
    tasks_on_node,
)

from conftest import REPO, find_mpirun


@pytest.fixture
def bare_env(monkeypatch):
    """os.environ without any launcher's variables; the rendezvous variables that a test sets (e.g.
    through ``distributed.export``) are removed again afterwards, so they cannot leak into later
    tests' jobs."""
    for key in LAUNCH_VARIABLES:
        monkeypatch.setenv(key, "")  # records the original state, restored at teardown
    for key in list(os.environ):
        if key in LAUNCH_VARIABLES or key.startswith(LAUNCH_PREFIXES):
            monkeypatch.delenv(key)
    return monkeypatch


# ------------------------------------------------------------------ node lists
@pytest.mark.parametrize("nodelist, hosts", [
    ("localhost", ["localhost"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("gpu-a[1-2]-ib,login1", ["gpu-a1-ib", "gpu-a2-ib", "login1"]),
    ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
    ("nid[009-011],nid100", ["nid009", "nid010", "nid011", "nid100"]),
])
def test_parse_nodelist(nodelist, hosts):
    assert parse_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["node[01-", "node]1[", "n[3-1]", "n[a-b]", ""])
def test_parse_nodelist_rejects_malformed_lists(bad):
    with pytest.raises(DistributedError):
        parse_nodelist(bad)


def test_tasks_per_node_and_port():
    assert (tasks_on_node("2(x3),1", 0) == 2 and tasks_on_node("2(x3),1", 3) == 1
            and tasks_on_node("4", 0) == 4)
    assert port_from_job_id("123.0") == port_from_job_id("123.0") != port_from_job_id("124.0")
    # below Linux's default ephemeral range (32768-60999): a CI run once lost job 289's port, then
    # 33002, to an outgoing connection's source port
    assert all(20000 <= port_from_job_id(str(j)) < 32768 for j in range(2000))


# ------------------------------------------------------------------ sources
def test_single_process_without_launcher(bare_env):
    env = discover()
    assert (env.rank, env.local_rank, env.world_size, env.source) == (0, 0, 1, "single")
    assert env.master_addr == "127.0.0.1" and 0 < env.master_port < 65536


def test_torchrun_environment(bare_env):
    bare_env.setenv("RANK", "3")
    bare_env.setenv("WORLD_SIZE", "8")
    bare_env.setenv("LOCAL_RANK", "1")
    bare_env.setenv("LOCAL_WORLD_SIZE", "2")
    bare_env.setenv("MASTER_ADDR", "node01")
    bare_env.setenv("MASTER_PORT", "29400")
    bare_env.setenv("SLURM_PROCID", "0")  # torchrun inside a SLURM step: torchrun's variables win
    env = discover()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 8, 2)
    assert (env.master_addr, env.master_port, env.source) == ("node01", 29400, "torchrun")


@pytest.mark.parametrize("present", [("RANK",), ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
                                     ("LOCAL_RANK", "MASTER_PORT")])
def test_partial_torchrun_environment_is_an_error(bare_env, present):
    for key in present:
        bare_env.setenv(key, "0")
    with pytest.raises(DistributedError, match="incomplete torch.distributed environment"):
        discover()


def test_impossible_ranks_are_an_error(bare_env):
    for key, value in dict(RANK="2", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="a",
                           MASTER_PORT="1").items():
        bare_env.setenv(key, value)
    with pytest.raises(DistributedError, match="impossible rank 2"):
        discover()


def _slurm(env, **extra):
    values = dict(SLURM_PROCID="5", SLURM_NTASKS="8", SLURM_LOCALID="1", SLURM_JOB_ID="777",
                  SLURM_STEP_NODELIST="gpu[03-06]", SLURM_STEP_TASKS_PER_NODE="2(x4)",
                  SLURM_NODEID="2")
    values.update(extra)
    for key, value in values.items():
        if value is None:
            env.delenv(key, raising=False)
        else:
            env.setenv(key, value)


def test_slurm_srun_environment(bare_env):
    _slurm(bare_env)
    env = discover()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (5, 1, 8, 2)
    assert ((env.master_addr, env.master_port, env.source)
            == ("gpu03", port_from_job_id("777.0"), "slurm"))


def test_slurm_job_nodelist_fallback_and_master_override(bare_env):
    _slurm(bare_env, SLURM_PROCID="3", SLURM_STEP_NODELIST=None, SLURM_JOB_NODELIST="cn[10-11]",
           SLURM_STEP_NUM_TASKS="4", SLURM_STEP_TASKS_PER_NODE=None)
    bare_env.setenv("MASTER_PORT", "31000")
    env = discover()
    assert (env.world_size, env.master_addr, env.master_port) == (4, "cn10", 31000)


def test_partial_slurm_environment_is_an_error(bare_env):
    _slurm(bare_env, SLURM_LOCALID=None)
    with pytest.raises(DistributedError, match="incomplete SLURM task environment.*SLURM_LOCALID"):
        discover()
    _slurm(bare_env, SLURM_STEP_NODELIST=None)
    with pytest.raises(DistributedError, match="NODELIST"):
        discover()


def test_slurm_variables_inherited_by_mpirun_are_ignored(bare_env):
    # e.g. srun-started hydra proxies; mpirun made this MPI rank 1
    _slurm(bare_env, SLURM_PROCID="0")
    bare_env.setenv("PMI_RANK", "1")
    assert distributed._from_slurm() is None
    bare_env.setenv("PMI_RANK", "0")  # MPI rank 0 of a world of 16, SLURM says 8 tasks
    bare_env.setenv("PMI_SIZE", "16")
    assert distributed._from_slurm() is None
    bare_env.setenv("PMI_SIZE", "8")  # srun --mpi=pmi2: both agree
    assert distributed._from_slurm().rank == 0


def test_batch_script_without_srun_is_a_single_process(bare_env):
    for key, value in dict(SLURM_PROCID="0", SLURM_NTASKS="8", SLURM_LOCALID="0", SLURM_JOB_ID="9",
                           SLURM_JOB_NODELIST="gpu[01-02]").items():
        bare_env.setenv(key, value)
    assert discover().source == "single"


def test_submitit_environment(bare_env):
    for key, value in dict(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID="4242",
                           SUBMITIT_LOCAL_NTASKS="2", SUBMITIT_LOCAL_GLOBALID="1",
                           SUBMITIT_LOCAL_LOCALID="1", SUBMITIT_LOCAL_JOB_NUM_NODES="1").items():
        bare_env.setenv(key, value)
    env = discover()
    assert (env.rank, env.local_rank, env.world_size, env.source) == (1, 1, 2, "submitit")
    assert (env.master_addr, env.master_port) == ("127.0.0.1", port_from_job_id("4242"))


class _FakeComm:
    """Rank 1 of 2 on one node; rank 0 'broadcasts' its address and port."""

    def __init__(self, rank=1, size=2):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Split_type(self, split, key):
        return _FakeComm(self.rank, self.size)

    def Free(self):
        pass

    def Bcast(self, buf, root):
        payload = np.frombuffer(b"127.0.0.1 29999", dtype=np.uint8)
        buf[:] = 0
        buf[: len(payload)] = payload


def test_mpi_environment(bare_env):
    bare_env.setenv("PMI_RANK", "1")
    bare_env.setenv("PMI_SIZE", "2")
    bare_env.setattr("pipeline.runtime.mpi.world_comm", lambda: _FakeComm())
    bare_env.setattr("pipeline.runtime.distributed._shared_memory_split", lambda: 0)
    env = discover()
    assert ((env.rank, env.local_rank, env.world_size, env.local_world_size, env.source)
            == (1, 1, 2, 2, "mpi"))
    assert (env.master_addr, env.master_port) == ("127.0.0.1", 29999)


def test_export_sets_all_rendezvous_variables(bare_env):
    export(distributed.DistEnv(1, 0, 2, "hostA", 12345, "slurm", 1))
    assert {k: os.environ[k] for k in distributed.RENDEZVOUS} == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "hostA",
        "MASTER_PORT": "12345"}


# ------------------------------------------------------------------ real launches
@pytest.mark.slow
@pytest.mark.mpi
def test_mpirun_two_ranks_zero1_and_resume_with_other_world_size(tmp_path, store):
    mpirun = find_mpirun()
    if mpirun is None:
        pytest.skip("mpirun not found")
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", store, run, max_steps=4, zero_stage=1,
                       validation={"every_steps": 0})
    result = run_group([mpirun, "-n", "2", *train_cmd(cfg)], timeout=180,
                       env=clean_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    done = read_record(run)
    assert ((done.launcher, done.world_size, done.zero_stage, done.ranks_agree)
            == ("mpi", 2, 1, True))
    # one rank cannot resume a two-rank ZeRO checkpoint: a clear error saying what to do instead
    again = run_train(cfg, "--max-steps", "6")
    assert again.returncode == 2, again.stderr[-4000:]
    assert ("written by 2 ranks but this run has 1" in again.stderr
            and "train.init_from=" in again.stderr)
    # ... and that advice works: weights and EMA of the 2-rank run, fresh optimiser, one rank
    fresh = run_train(cfg, "--max-steps", "2", "--set", f"run.dir={tmp_path / 'fresh'}",
                      "--set", f"train.init_from={run}")
    assert fresh.returncode == 0, fresh.stderr[-4000:]
    assert read_record(tmp_path / "fresh").step == 2


def srun_style_ranks(cmd: list[str], timeout: float = 180,
                     **rank_env: dict[str, str]) -> tuple[list, list[str]]:
    """Two ranks of ``cmd`` with the SLURM variables srun sets (``rank_env["r1"]``: more variables
    for rank 1)."""
    job = str(random.randrange(10**6, 10**7))
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True,
                              env=clean_env(SLURM_PROCID=str(r), SLURM_NTASKS="2",
                                            SLURM_LOCALID=str(r), SLURM_STEP_NODELIST="localhost",
                                            SLURM_JOB_ID=job, SLURM_NODEID="0",
                                            OMP_NUM_THREADS="1", **rank_env.get(f"r{r}", {})))
             for r in range(2)]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outputs


@pytest.mark.slow
def test_srun_style_slurm_variables_two_ranks(tmp_path, store):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", store, run, max_steps=4, grad_accum=2,
                       validation={"every_steps": 2, "per_rank_batches": 1},
                       # time-based: every step
                       checkpoint_every_steps=0, checkpoint_every_minutes=1e-5,
                       # shared by 2 ranks
                       monitor={"every_steps": 4, "showers": 9, "sample_steps": 1})
    codes, outputs = srun_style_ranks(train_cmd(cfg))
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    done = read_record(run)
    assert (done.launcher, done.world_size, done.ranks_agree) == ("slurm", 2, True)
    state = json.loads((Path(done.checkpoint) / "rank_1.json").read_text())
    assert state["stream"]["rank"] == 1 and state["stream"]["world_size"] == 2
    # 2 micro-batches of 2 per rank and step
    assert state["stream"]["batch"] == 8 and done.samples == 4 * 2 * 4
    saved = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert saved == ["step_00000003", "step_00000004"]  # one per step by time, the newest 2 kept
    # rows 0::2 on rank 0, 1::2 on rank 1
    monitor = (run / "logs" / "monitor.csv").read_text().splitlines()
    assert [line.split(",")[:2] for line in monitor[1:]] == [["0", "9"], ["4", "9"]]


STALE_VIEW = """
import os
from pipeline.training import checkpoint  # noqa: E402
stale = os.environ["CALO_TEST_STALE_LATEST"]
checkpoint.Checkpointer.latest_tag = lambda self: stale  # this rank's filesystem view lags behind
"""


@pytest.mark.slow
def test_a_rank_with_a_stale_view_of_the_checkpoints_follows_rank_0(tmp_path, store):
    """On NFS/Lustre one rank can see an older ``latest`` than rank 0. Which checkpoint to resume
    and whether a step is already saved lead into collectives, so rank 0 decides and broadcasts:
    rank 1, which always reads ``latest`` as step 2, still resumes from step 4 with rank 0, and the
    run neither hangs nor forks."""
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", store, run, max_steps=4, checkpoint_every_steps=2,
                       validation={"every_steps": 0})
    codes, outputs = srun_style_ranks(train_cmd(cfg))
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALE_VIEW)
    codes, outputs = srun_style_ranks(train_cmd(cfg, "--max-steps", "6"), timeout=240,
                                      r1={"PYTHONPATH": str(hook),
                                          "CALO_TEST_STALE_LATEST": "step_00000002"})
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "resumed from step_00000004 at step 4/6" in outputs[0]
    done = read_record(run)
    assert done.step == 6 and done.world_size == 2 and done.ranks_agree


def _hold_gpu(ready, release) -> None:  # another rank of the job, on the same GPU
    from pipeline.runtime import gpu_claim

    gpu_claim.claim("test-gpu-uuid-0", "GPU 0 (test)")
    ready.set()
    release.wait(30)


def test_two_ranks_on_one_gpu_is_an_error_that_says_so(monkeypatch, tmp_path):
    """More ranks than GPUs on a node: the second rank to claim a GPU stops with a message
    (not silent sharing)."""
    import multiprocessing as mp

    from pipeline.runtime import gpu_claim

    monkeypatch.setattr(gpu_claim, "lock_dir", lambda: tmp_path)
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_gpu, args=(ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(DistributedError,
                           match=r"GPU 0 \(test\) on .* is already in use by pid \d+: more ranks "
                                 r"than GPUs on this node"):
            gpu_claim.claim("test-gpu-uuid-0", "GPU 0 (test)")
        monkeypatch.setenv("CALO_ALLOW_GPU_SHARING", "1")
        gpu_claim.claim("test-gpu-uuid-0", "GPU 0 (test)")  # on purpose: allowed
    finally:
        release.set()
        holder.join(30)
    monkeypatch.delenv("CALO_ALLOW_GPU_SHARING")
    gpu_claim.claim("test-gpu-uuid-0", "GPU 0 (test)")  # free again once the holder exited
    assert "test-gpu-uuid-0" in gpu_claim._held
    assert ((tmp_path / f"calo-gpu-{os.getuid()}-test-gpu-uuid-0.lock").stat().st_mode & 0o777
            == 0o600)


class _FakeNode:
    """CUDA as one task sees it: ``visible`` GPU UUIDs; every bind is a fresh process (its own
    claims), while the locks earlier tasks took stay held."""

    def __init__(self, monkeypatch, tmp_path) -> None:
        from pipeline.runtime import gpu_claim

        self.gpu_claim, self.monkeypatch, self.current = gpu_claim, monkeypatch, None
        monkeypatch.setattr(gpu_claim, "lock_dir", lambda: tmp_path)
        monkeypatch.delenv("CALO_ALLOW_GPU_SHARING", raising=False)
        monkeypatch.setattr(torch.cuda, "set_device", lambda index: setattr(self, "current", index))
        self.fds: list[int] = []

    def bind(self, local_rank: int, visible: list[str]) -> str:
        """The UUID of the GPU a task with ``local_rank`` that sees ``visible`` binds to."""
        m = self.monkeypatch
        m.setattr(torch.cuda, "device_count", lambda: len(visible))
        m.setattr(torch.cuda, "get_device_properties",
                  lambda i: type("P", (), {"uuid": visible[i], "name": "H100"}))
        m.setattr(self.gpu_claim, "_held", {})
        index = self.gpu_claim.bind_local_gpu(local_rank)
        self.fds += self.gpu_claim._held.values()
        assert self.current == index
        return visible[index]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


@pytest.mark.parametrize("binding", ["all GPUs", "gpus-per-task=1", "gpu-bind=closest, cyclic"])
def test_each_rank_binds_a_gpu_of_its_own_whatever_the_slurm_binding(monkeypatch, tmp_path,
                                                                      binding):
    node = _FakeNode(monkeypatch, tmp_path)
    gpus = ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]
    try:
        if binding == "all GPUs":
            # the device is the local rank
            assert [node.bind(r, gpus) for r in range(4)] == gpus
        elif binding == "gpus-per-task=1":
            # every task sees one GPU, its device 0 (LOCAL_RANK would not exist)
            assert [node.bind(r, [gpus[r]]) for r in range(4)] == gpus
        else:
            # tasks 0, 2 see the first socket's GPUs, 1, 3 the second's: local_rank % 2 would
            # collide
            sockets = {0: gpus[:2], 1: gpus[2:], 2: gpus[:2], 3: gpus[2:]}
            assert sorted(node.bind(r, sockets[r]) for r in range(4)) == gpus
        with pytest.raises(DistributedError,
                           match=r"every GPU this task sees \(4\) on .* is already in use by "
                                 r"GPU 0 \(H100, GPU-a\): pid \d+.*more ranks than GPUs"):
            node.bind(4, gpus)
    finally:
        node.close()


def test_a_gpu_lock_that_is_not_ours_is_a_clear_error(monkeypatch, tmp_path):
    node = _FakeNode(monkeypatch, tmp_path)

    def refuse(path, *args):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(node.gpu_claim.os, "open", refuse)
    with pytest.raises(DistributedError,
                       match=r"cannot open the GPU lock .*calo-gpu-\d+-GPU-a.lock "
                             r"\(Permission denied\): it belongs to someone else"):
        node.bind(0, ["GPU-a"])


def test_deepspeed_is_told_the_bound_device():
    from pipeline.training.engine import engine_args

    assert (engine_args(torch.device("cuda", 1)).device_rank == 1
            and engine_args(torch.device("cpu")) is None)


def test_zero_buckets_let_the_gradient_reduction_overlap_the_backward():
    """A quarter of the parameters per bucket: the large preset's 120 M would otherwise fit
    DeepSpeed's one default bucket (5e8 elements, ~4 GB with overlap_comm) and be reduced only after
    the backward pass."""
    from pipeline.config import Config
    from pipeline.training.engine import bucket_elements, deepspeed_config

    assert bucket_elements(120_000_000) == 30_000_000 and bucket_elements(1000) == 2**20
    assert bucket_elements(10**10) == 5e8
    zero = deepspeed_config(Config(), 4, torch.device("cuda", 0), 120_000_000)["zero_optimization"]
    assert (zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 30_000_000
            and zero["overlap_comm"])
