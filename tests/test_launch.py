"""pipeline.launch: the stage graph, plans, dry-run and status, the submitit callable, and runs of
the chain.

Unit tests need no cluster. Stages are replaced by a fake stage script (writes its completion
marker, or fails, or stops with exit 75) wherever a test runs jobs, except in the smoke-chain tests
at the end. Tests marked ``slurm`` run against a real SLURM cluster
(``bash tests/slurm/cluster.sh up``) and are skipped with the reason when none answers.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.config.loader import ConfigError
from pipeline.launch import command as launch
from pipeline.launch.executors import executor_parameters
from pipeline.launch.plan import Step, build_plan, chain, format_plan, is_live, select
from pipeline.launch.stage_job import StageFailed, StageJob

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"
NAMES = ["convert", "train", "distill:1", "distill:2", "generate", "export", "evaluate"]

FAKE_STAGE = textwrap.dedent('''
    """Fake stage: python fake_stage.py MARKER KIND CONTROL_DIR NAME (control files steer it)."""
    import json, os, signal, sys, time
    from pathlib import Path
    marker, kind, ctl, name = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    with open(ctl / f"runs_{name}", "a") as f:
        f.write(os.environ.get("SLURM_JOB_ID", os.environ.get("SUBMITIT_LOCAL_JOB_ID", "?"))
                + "\\n")
    if (ctl / f"fail_{name}").exists():
        sys.exit(2)
    if (ctl / f"stop_{name}").exists():        # wait for SIGUSR1 (checkpoint), then exit 75 once
        (ctl / f"stop_{name}").unlink()
        got = []
        signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
        (ctl / f"waiting_{name}").touch()
        while not got:
            time.sleep(0.05)
        sys.exit(75)
    if (ctl / f"exit75_{name}").exists():      # stop on its own (time limit) once
        (ctl / f"exit75_{name}").unlink()
        sys.exit(75)
    if kind == "convert":
        marker.mkdir(parents=True, exist_ok=True)
        (marker / "zarr.json").write_text(json.dumps({"attributes": {"complete": True}}))
    else:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")
''')


def overrides(tmp: Path, *extra: str) -> list[str]:
    return [f"run.dir={tmp}/run", f"data.store={tmp}/store.zarr",
            f"data.inputs=[{tmp}/standin.hdf5]", f"generate.energies_from={tmp}/reference.hdf5",
            f"evaluate.reference={tmp}/reference.hdf5", *extra]


@pytest.fixture
def cfg(tmp_path: Path):
    return load_config(SMOKE, overrides(tmp_path))


def finish(cfg, *names: str) -> None:
    """Write the completion markers of the named stages."""
    for stage in chain(cfg):
        if stage.name in names:
            if stage.kind == "convert":
                stage.marker.mkdir(parents=True, exist_ok=True)
                (stage.marker / "zarr.json").write_text(
                    json.dumps({"attributes": {"complete": True}}))
            else:
                stage.marker.parent.mkdir(parents=True, exist_ok=True)
                stage.marker.write_text("{}")


def no_jobs(name: str):
    return None, None


def jobs_from(table: dict):
    return lambda name: table.get(name, (None, None))


def actions(plan: list[Step]) -> dict[str, str]:
    return {s.stage.name: s.action for s in plan}


# ------------------------------------------------------------------ graph and selection
def test_chain_markers_and_commands(cfg, tmp_path):
    stages = chain(cfg)
    assert [s.name for s in stages] == NAMES
    by = {s.name: s for s in stages}
    assert by["train"].marker == tmp_path / "run" / "DONE.json"
    assert by["distill:2"].marker == tmp_path / "run" / "distill" / "stage_2" / "DONE.json"
    assert by["generate"].marker == tmp_path / "run" / "samples" / "generated.zarr.manifest.json"
    assert by["export"].marker == tmp_path / "run" / "samples" / "generated.hdf5"
    assert by["evaluate"].marker == tmp_path / "run" / "evaluation" / "report.json"
    assert by["distill:2"].command("C.yaml") == ["python", "-m", "pipeline.distill",
                                                 "--config", "C.yaml", "--stage", "2"]
    assert by["convert"].command("C.yaml", "/py") == ["/py", "-m", "data_tools.convert",
                                                      "--config", "C.yaml"]


def test_convert_is_done_only_when_the_store_is_complete(cfg):
    convert = chain(cfg)[0]
    assert not convert.is_done()
    convert.marker.mkdir(parents=True)
    (convert.marker / "zarr.json").write_text(json.dumps({"attributes": {"complete": False}}))
    assert not convert.is_done() and convert.marker_state() == "-"
    finish(cfg, "convert")
    assert convert.is_done() and convert.marker_state() == "done"


def test_requeue_marker_state(cfg):
    train = chain(cfg)[1]
    train.workdir.mkdir(parents=True)
    (train.workdir / "REQUEUE").write_text("{}")
    assert train.marker_state() == "requeue"


@pytest.mark.parametrize("spec, expected", [
    (None, NAMES), ("all", NAMES), ("train,distill", ["train", "distill:1", "distill:2"]),
    ("distill:2", ["distill:2"]), ("distill:1-2,evaluate", ["distill:1", "distill:2", "evaluate"]),
    (" export , convert ", ["convert", "export"]),
])
def test_select(cfg, spec, expected):
    assert select(chain(cfg), spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("trian", "unknown stage 'trian'"), ("distill:3", "distill:1..distill:2"),
    ("distill:2-1", "distill:2-1"), ("train,", "unknown stage ''"),
])
def test_select_errors(cfg, spec, message):
    with pytest.raises(ConfigError, match=message):
        select(chain(cfg), spec)


def test_select_without_distillation_stages(tmp_path):
    cfg = load_config(SMOKE, overrides(tmp_path, "distill.final_steps=8"))
    assert [s.name for s in chain(cfg)] == ["convert", "train", "generate", "export", "evaluate"]
    with pytest.raises(ConfigError, match="no distillation stages"):
        select(chain(cfg), "distill:1")


# ------------------------------------------------------------------ plans
def test_plan_of_a_fresh_run_chains_every_stage(cfg):
    plan = build_plan(chain(cfg), NAMES, no_jobs)
    assert all(s.action == "submit" for s in plan)
    assert [s.after for s in plan] == [None, *NAMES[:-1]]


def test_plan_skips_finished_stages(cfg):
    finish(cfg, "convert", "train", "distill:1")
    plan = build_plan(chain(cfg), NAMES, no_jobs)
    assert actions(plan) == {"convert": "done", "train": "done", "distill:1": "done",
                             "distill:2": "submit", "generate": "submit", "export": "submit",
                             "evaluate": "submit"}
    assert plan[3].after is None and plan[4].after == "distill:2"


def test_plan_subset_needs_its_upstream(cfg):
    stages = chain(cfg)
    with pytest.raises(ConfigError,
                       match="distill:1 needs train, which is neither done nor queued"):
        build_plan(stages, select(stages, "distill"), no_jobs)
    finish(cfg, "convert", "train")
    plan = build_plan(stages, select(stages, "distill"), no_jobs)
    assert actions(plan) == {"convert": "done", "train": "done", "distill:1": "submit",
                             "distill:2": "submit", "generate": "skip", "export": "skip",
                             "evaluate": "skip"}


def test_plan_keeps_live_jobs_and_depends_on_them(cfg):
    finish(cfg, "convert")
    table = {"train": ("11", "RUNNING"), "distill:1": ("12", "PENDING")}
    plan = build_plan(chain(cfg), NAMES, jobs_from(table))
    assert actions(plan)["train"] == "queued" and actions(plan)["distill:1"] == "queued"
    assert plan[3].action == "submit" and plan[3].after == "distill:1"


def test_plan_after_a_failure_contains_only_what_is_left(cfg):
    finish(cfg, "convert", "train")
    table = {"convert": ("10", "COMPLETED"), "train": ("11", "COMPLETED"),
             "distill:1": ("12", "FAILED"), "distill:2": ("13", "CANCELLED by 0"),
             "generate": ("14", "CANCELLED by 0")}
    plan = build_plan(chain(cfg), NAMES, jobs_from(table))
    assert actions(plan) == {"convert": "done", "train": "done", "distill:1": "submit",
                             "distill:2": "submit", "generate": "submit", "export": "submit",
                             "evaluate": "submit"}


def test_plan_replaces_pending_jobs_that_wait_on_a_failed_one(cfg):
    """Without kill_invalid_depend, dependents of a failed job stay PENDING forever: cancel and
    resubmit."""
    finish(cfg, "convert")
    table = {"train": ("11", "FAILED"), "distill:1": ("12", "PENDING"),
             "distill:2": ("13", "PENDING")}
    plan = build_plan(chain(cfg), NAMES, jobs_from(table))
    assert actions(plan)["train"] == "submit"
    assert actions(plan)["distill:1"] == "resubmit" and plan[2].job_id == "12" and plan[2].notes
    assert actions(plan)["distill:2"] == "resubmit"


def test_plan_refuses_a_running_job_whose_upstream_is_resubmitted(cfg):
    table = {"train": ("11", "RUNNING")}
    with pytest.raises(ConfigError,
                       match="train: job 11 is RUNNING but convert before it is not done"):
        build_plan(chain(cfg), NAMES, jobs_from(table))


def test_live_states():
    assert (is_live("PENDING") and is_live("RUNNING") and is_live("REQUEUED")
            and is_live("COMPLETING"))
    assert not is_live("COMPLETED") and not is_live("FAILED") and not is_live("CANCELLED by 0")
    assert (not is_live("UNKNOWN") and not is_live(None) and not is_live("TIMEOUT")
            and not is_live("ENDED"))


def test_format_plan_names_resources_dependencies_and_commands(cfg):
    finish(cfg, "convert")
    plan = build_plan(chain(cfg), NAMES, jobs_from({"train": ("11", "RUNNING")}))
    text = format_plan(plan, lambda s: cfg.launch.resources(s.kind), lambda s: s.command("C.yaml"))
    assert "convert     done" in text and "train       queued (job 11 RUNNING)" in text
    assert "after: train" in text and "python -m pipeline.distill --config C.yaml --stage 1" in text
    assert "1 node x 1 task, 0 GPUs/node, 2 CPUs/task, 10 min" in text


# ------------------------------------------------------------ executor parameters and sbatch script
def test_slurm_parameters_and_sbatch_script(cfg, tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    cfg.launch.partition, cfg.launch.account, cfg.launch.setup = "gpu", "calo", ["module load cuda"]
    cfg.launch.additional_parameters = {"constraint": "a100"}
    cfg.launch.train.gpus_per_node, cfg.launch.train.mem_gb = 4, 64
    train = chain(cfg)[1]
    params = executor_parameters(cfg, train, "slurm", after="123")
    script = _make_sbatch_string(command="python -m submitit.core._submit X",
                                 folder=tmp_path / "%j", **params)
    for line in ("--dependency=afterok:123", "--kill-on-invalid-dep=yes", "--requeue",
                 "--signal=USR1@30", "--gpus-per-node=4", "--mem=64GB", "--partition=gpu",
                 "--account=calo", "--constraint=a100", "--time=10", "--ntasks-per-node=1",
                 "--cpus-per-task=2"):
        assert f"#SBATCH {line}\n" in script, line
    assert ("export OMP_NUM_THREADS=2\nmodule load cuda\nexport SUBMITIT_PREEMPT_SIGNAL=USR1\n"
            in script)  # threads = --cpus-per-task, as slurm/env.sh sets them
    assert "USR2" not in script
    convert = executor_parameters(cfg, chain(cfg)[0], "slurm", after=None)
    assert "dependency" not in convert["additional_parameters"] and "gpus_per_node" not in convert
    assert convert["srun_args"] == ["--kill-on-bad-exit=1"]  # a dead task ends the step at once
    cfg.launch.convert.tasks_per_node = 4
    assert (executor_parameters(cfg, chain(cfg)[0], "slurm", None)["srun_args"]
            == ["--kill-on-bad-exit=1", "--mpi=pmi2"])
    local = executor_parameters(cfg, chain(cfg)[0], "local", None)
    assert (local["tasks_per_node"] == 1 and local["timeout_min"] == 10
            and local["signal_delay_s"] == 30)


@pytest.mark.parametrize("override, message", [
    ("launch.signal_seconds=600",
     "launch.signal_seconds: 600 s must be below launch.convert.time_minutes"),
    ("launch.export.tasks_per_node=2", "launch.export: runs as one task"),
    ("launch.train.nodes=0", "launch.train.nodes: must be >= 1"),
    ("launch.executor=pbs", "launch.executor: expected one of"),
    ("launch.additional_parameters={dependency: x}", "dependency is set by pipeline.launch"),
    ("launch.gpus=1", "launch.gpus: unknown key"),
])
def test_launch_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, overrides(tmp_path, override))


# ------------------------------------------------------------ command line: dry-run, status, errors
def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    code = launch.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def sets(tmp: Path, *extra: str) -> list[str]:
    return [a for o in overrides(tmp, *extra) for a in ("--set", o)]


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(launch, "make_executor", pytest.fail)
    code, out, _ = run_main(["--config", str(SMOKE), *sets(tmp_path), "--executor", "slurm",
                             "--dry-run", "--stages", "convert,train,distill:1"], capsys)
    assert code == 0
    assert (f"launch plan for {tmp_path}/run (slurm; config {tmp_path}/run/launch/config.yaml)"
            in out)
    assert ("distill:1   submit" in out and "distill:2   not selected" in out
            and "after: train" in out)
    assert f"-m pipeline.distill --config {tmp_path}/run/launch/config.yaml --stage 1" in out
    assert not (tmp_path / "run").exists()


def test_config_and_stage_errors_exit_2(tmp_path, capsys):
    code, _, err = run_main(["--config", str(SMOKE), *sets(tmp_path), "--stages", "distil",
                             "--dry-run"], capsys)
    assert code == 2 and "launch: error: --stages: unknown stage 'distil'" in err
    code, _, err = run_main(["--config", str(SMOKE), *sets(tmp_path, "launch.qos=7"), "--dry-run"],
                            capsys)
    assert code == 2 and "launch.qos: expected a string" in err
    with pytest.raises(SystemExit) as exc:
        launch.main(["--config", str(SMOKE), "--executor", "pbs"])
    assert exc.value.code == 2


def test_status_shows_markers_and_job_states(cfg, tmp_path, capsys, monkeypatch):
    finish(cfg, "convert")
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "REQUEUE").write_text("{}")
    record = launch.JobRecord(tmp_path / "run" / "launch" / "jobs.json")
    record.put("train", job_id="11", executor="slurm")
    record.put("distill:1", job_id="12", executor="slurm")
    monkeypatch.setattr(launch, "job_states", lambda rec: {"11": "RUNNING", "12": "PENDING"})
    code, out, _ = run_main(["status", "--config", str(SMOKE), *sets(tmp_path)], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert rows["convert"] == ["done", "-", "-"]
    assert rows["train"] == ["requeue", "11", "RUNNING"]
    assert rows["distill:1"] == ["-", "12", "PENDING"]
    assert rows["evaluate"] == ["-", "-", "-"]


# ----------------------------------------------------------------- submission with a fake scheduler
class FakeJob:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id


class FakeScheduler:
    """Stands in for make_executor: records each stage's parameters and hands out job ids."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, dict]] = []
        self.next_id = 100

    def __call__(self, cfg, stage, executor, after):
        params = executor_parameters(cfg, stage, executor, after)
        scheduler = self

        class Executor:
            def submit(self, job):
                assert isinstance(job, StageJob) and job.stage == stage.name
                scheduler.submitted.append((stage.name, params))
                scheduler.next_id += 1
                return FakeJob(str(scheduler.next_id))

        return Executor()


def test_submission_records_jobs_and_a_relaunch_submits_only_what_is_left(tmp_path, capsys,
                                                                           monkeypatch):
    fake = FakeScheduler()
    monkeypatch.setattr(launch, "make_executor", fake)
    monkeypatch.setattr(launch, "_cancel",
                        lambda cfg, job_id: fake.submitted.append((f"cancel {job_id}", {})))
    args = ["--config", str(SMOKE), *sets(tmp_path), "--executor", "slurm"]
    code, out, _ = run_main(args, capsys)
    assert code == 0 and "launch: distill:1: job 103 (afterok:102)" in out
    assert [name for name, _ in fake.submitted] == NAMES
    deps = [p["additional_parameters"].get("dependency") for _, p in fake.submitted]
    assert deps == [None, "afterok:101", "afterok:102", "afterok:103", "afterok:104",
                    "afterok:105", "afterok:106"]
    record = json.loads((tmp_path / "run" / "launch" / "jobs.json").read_text())
    assert (record["stages"]["train"]["job_id"] == "102"
            and record["stages"]["train"]["executor"] == "slurm")
    config = tmp_path / "run" / "launch" / "config.yaml"
    assert load_config(config).run.dir == f"{tmp_path}/run"
    assert record["stages"]["train"]["command"][-2:] == ["--config", str(config)]

    # relaunch while everything is queued: nothing new
    fake.submitted.clear()
    monkeypatch.setattr(launch, "job_states",
                        lambda rec: {str(i): "PENDING" for i in range(101, 108)})
    code, out, _ = run_main(args, capsys)
    assert code == 0 and "nothing to submit" in out and fake.submitted == []

    # convert done, train failed, its dependents still pending: resubmit train, replace the
    # pending ones
    cfg = load_config(SMOKE, overrides(tmp_path))
    finish(cfg, "convert")
    states = {"101": "COMPLETED", "102": "FAILED", **{str(i): "PENDING" for i in range(103, 108)}}
    monkeypatch.setattr(launch, "job_states", lambda rec: states)
    code, out, _ = run_main(args, capsys)
    assert code == 0
    assert [n for n, _ in fake.submitted] == ["train", "cancel 103", "distill:1", "cancel 104",
                                              "distill:2", "cancel 105", "generate", "cancel 106",
                                              "export", "cancel 107", "evaluate"]
    assert fake.submitted[0][1]["additional_parameters"].get("dependency") is None
    record = json.loads((tmp_path / "run" / "launch" / "jobs.json").read_text())
    assert record["stages"]["train"]["job_id"] == "108"
    assert [h["job_id"] for h in record["history"] if h["stage"] == "train"] == ["102"]


def test_relaunch_refuses_a_changed_config_under_queued_jobs(tmp_path, capsys, monkeypatch):
    fake = FakeScheduler()
    monkeypatch.setattr(launch, "make_executor", fake)
    args = ["--config", str(SMOKE), *sets(tmp_path), "--executor", "slurm",
            "--stages", "convert,train"]
    assert run_main(args, capsys)[0] == 0
    monkeypatch.setattr(launch, "job_states", lambda rec: {"101": "RUNNING", "102": "PENDING"})
    code, _, err = run_main([*args, "--stages", "all", "--set", "train.lr=0.1"], capsys)
    assert code == 2 and ("differs from the one queued jobs will read: "
                          "convert (job 101), train (job 102)") in err
    code, _, err = run_main([*args, "--stages", "all"], capsys)  # same config: fine
    assert code == 0 and [n for n, _ in fake.submitted][2:] == NAMES[2:]


def test_local_launch_refuses_while_a_job_is_live(tmp_path, capsys):
    record = launch.JobRecord(tmp_path / "run" / "launch" / "jobs.json")
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                   "submitit.local._local"])
    try:
        record.put("convert", job_id=str(controller.pid), executor="local")
        code, _, err = run_main(["--config", str(SMOKE), *sets(tmp_path), "--executor", "local"],
                                capsys)
        assert code == 2 and f"convert: its local job {controller.pid} is still RUNNING" in err
    finally:
        controller.kill()
        controller.wait()
    assert launch.job_states(record) == {str(controller.pid): "ENDED"}


# ------------------------------------------------------------------ the submitit callable
def fake_job(tmp: Path, name: str = "train", kind: str = "train", **kw) -> StageJob:
    script = tmp / "fake_stage.py"
    script.write_text(FAKE_STAGE)
    return StageJob(name, [sys.executable, str(script), str(tmp / f"marker_{name}"), kind,
                           str(tmp), name],
                    str(tmp), **kw)


def runs(tmp: Path, name: str) -> list[str]:
    path = tmp / f"runs_{name}"
    return path.read_text().split() if path.exists() else []


def test_stage_job_success_and_failure(tmp_path):
    assert fake_job(tmp_path)() == {"stage": "train", "returncode": 0, "requeues": 0}
    assert (tmp_path / "marker_train").exists()
    (tmp_path / "fail_train").touch()
    with pytest.raises(StageFailed, match=r"stage train: `.*fake_stage.py .*` exited with 2"):
        fake_job(tmp_path)()


@pytest.mark.parametrize("debug", [False, True])
def test_stage_job_stopped_outside_a_submitit_job_fails_instead_of_signalling_itself(
        tmp_path, monkeypatch, debug):
    if debug:
        # submitit's DebugExecutor: no signal handler
        monkeypatch.setenv("SUBMITIT_DEBUG_JOB_ID", "1")
    (tmp_path / "exit75_train").touch()
    with pytest.raises(StageFailed, match=r"stopped \(exit 75\) outside a submitit job"):
        fake_job(tmp_path)()


def test_stage_job_sigterm_stops_the_stage_without_requeue(tmp_path, monkeypatch):
    """SIGTERM (scancel, the time limit itself, preemption) means what it means under slurm/env.sh:
    the stage stops and the job fails rather than requeueing; a relaunch resumes."""
    import threading

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    (tmp_path / "stop_train").touch()  # the fake stage waits (and dies of the forwarded SIGTERM)

    def terminate_when_waiting() -> None:
        deadline = time.time() + 30
        while not (tmp_path / "waiting_train").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_when_waiting, daemon=True).start()
    with pytest.raises(StageFailed,
                       match="stopped by SIGTERM .*not requeueing; run the same command again"):
        fake_job(tmp_path)()
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_stage_job_checkpoint_forwards_sigusr1_and_resubmits_a_fresh_copy(tmp_path, monkeypatch):
    """checkpoint() (submitit's hook) while __call__ runs: the stage gets SIGUSR1 and exits 75."""
    import threading

    # __call__ then sees exit 75 as rank 1: no self-requeue
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    (tmp_path / "stop_train").touch()
    job = fake_job(tmp_path, max_requeues=1)
    result = {}
    thread = threading.Thread(target=lambda: result.update(job()))
    thread.start()
    deadline = time.time() + 30
    while not (tmp_path / "waiting_train").exists() and time.time() < deadline:
        time.sleep(0.05)
    delayed = job.checkpoint()
    thread.join(30)
    assert result == {"stage": "train", "returncode": 75, "requeues": 0}
    again = delayed.function
    assert isinstance(again, StageJob) and again.requeues == 1 and again.argv == job.argv
    assert again._proc is None and "_proc" not in again.__getstate__()
    assert again.checkpoint() is None  # max_requeues reached: submitit then fails the job


@pytest.mark.slow
def test_local_executor_requeues_on_submitit_timeout_signal(tmp_path, monkeypatch):
    """Real submitit LocalExecutor: its timeout signal (USR1) -> checkpoint -> requeue -> resumed
    run ends 0."""
    import submitit

    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    (tmp_path / "stop_train").touch()
    ex = submitit.LocalExecutor(folder=tmp_path / "logs" / "%j", max_num_timeout=2)
    # signal after ~4 s
    ex.update_parameters(timeout_min=0.25, signal_delay_s=11, stderr_to_stdout=True)
    job = ex.submit(fake_job(tmp_path))
    assert job.result() == {"stage": "train", "returncode": 0, "requeues": 1}
    assert len(runs(tmp_path, "train")) == 2 and (tmp_path / "marker_train").exists()


@pytest.mark.slow
def test_local_executor_requeues_a_stage_that_stops_on_its_own(tmp_path, monkeypatch):
    """Exit 75 without a signal (a stage's own time limit): the callable raises submitit's signal
    itself."""
    import submitit

    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    (tmp_path / "exit75_train").touch()
    ex = submitit.LocalExecutor(folder=tmp_path / "logs" / "%j", max_num_timeout=2)
    ex.update_parameters(timeout_min=5, stderr_to_stdout=True)
    job = ex.submit(fake_job(tmp_path))
    assert job.result() == {"stage": "train", "returncode": 0, "requeues": 1}
    assert len(runs(tmp_path, "train")) == 2
    # a stage that always stops is given up after max_requeues, and the job fails
    script = tmp_path / "always75.py"
    script.write_text("import sys; sys.exit(75)\n")
    ex = submitit.LocalExecutor(folder=tmp_path / "logs2" / "%j", max_num_timeout=5)
    ex.update_parameters(timeout_min=5, stderr_to_stdout=True)
    failing = ex.submit(StageJob("train", [sys.executable, str(script)], str(tmp_path),
                                 max_requeues=1))
    with pytest.raises(Exception, match="already requeued 1 times"):
        failing.result()


# ------------------------------------------------------------------ whole chains with fake stages
def use_fake_stages(monkeypatch, tmp: Path) -> None:
    script = tmp / "fake_stage.py"
    script.write_text(FAKE_STAGE)

    def stage_job(cfg, stage, config_file):
        marker = stage.marker.absolute()
        return StageJob(stage.name, [sys.executable, str(script), str(marker), stage.kind,
                                     str(tmp), stage.name],
                        os.getcwd(), cfg.launch.max_requeues)

    monkeypatch.setattr(launch, "stage_job", stage_job)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")


@pytest.mark.slow
def test_local_chain_runs_in_order_stops_at_a_failure_and_resumes(tmp_path, capsys, monkeypatch):
    use_fake_stages(monkeypatch, tmp_path)
    (tmp_path / "fail_distill:2").touch()
    args = ["--config", str(SMOKE), *sets(tmp_path), "--executor", "local"]
    code, out, err = run_main(args, capsys)
    assert code == 1 and "distill:2 failed" in err and "exited with 2" in err
    assert [n for n in NAMES if runs(tmp_path, n)] == ["convert", "train", "distill:1", "distill:2"]
    (tmp_path / "fail_distill:2").unlink()
    code, out, _ = run_main(args, capsys)
    assert code == 0
    assert {n: len(runs(tmp_path, n)) for n in NAMES} == {"convert": 1, "train": 1, "distill:1": 1,
                                                          "distill:2": 2, "generate": 1,
                                                          "export": 1, "evaluate": 1}
    code, out, _ = run_main(args, capsys)
    assert code == 0 and "nothing to submit" in out


# -------------------------------------------------------------- real SLURM (tests/slurm/cluster.sh)
@functools.lru_cache(maxsize=None)
def slurm_reason() -> str | None:
    """Why the SLURM tests cannot run, or None when a cluster answers."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client (sinfo/sbatch); start one with `bash tests/slurm/cluster.sh up`"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo does not answer within 10 s (is `bash tests/slurm/cluster.sh up` running?)"
    states = out.stdout.split()
    if (out.returncode != 0
            or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")
                       for s in states)):
        return ("no usable SLURM node "
                f"(sinfo: {(out.stdout + out.stderr).strip()[:200] or 'nothing'})")
    return None


slurm = pytest.mark.skipif(slurm_reason() is not None, reason=str(slurm_reason()))


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                         capture_output=True, text=True, timeout=30)
    return (out.stdout.split("\n")[0] or "UNKNOWN").strip()


def wait_for(predicate, timeout: float, what: str, poll: float = 2.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def jobs_json(tmp: Path) -> dict:
    return json.loads((tmp / "run" / "launch" / "jobs.json").read_text())["stages"]


@pytest.fixture
def slurm_run(tmp_path, monkeypatch):
    """A run directory on the shared filesystem; cancels the run's jobs afterwards."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    path = tmp_path / "run" / "launch" / "jobs.json"
    if path.exists():
        ids = [e["job_id"] for e in json.loads(path.read_text())["stages"].values()
               if e["executor"] == "slurm"]
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


@slurm
@pytest.mark.slow
def test_slurm_chain_with_fake_stages_failure_and_relaunch(slurm_run, capsys, monkeypatch):
    """Real SLURM: afterok chain; a failed stage cancels its dependents (kill-on-invalid-dep);
    relaunch ends it."""
    tmp = slurm_run
    use_fake_stages(monkeypatch, tmp)
    (tmp / "fail_distill:2").touch()
    args = ["--config", str(SMOKE), *sets(tmp), "--executor", "slurm"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    ids = {n: e["job_id"] for n, e in jobs_json(tmp).items()}
    assert list(ids) == NAMES
    wait_for(lambda: sacct_state(ids["evaluate"]).startswith("CANCELLED"), 180,
             "evaluate to be cancelled")
    assert (sacct_state(ids["distill:1"]) == "COMPLETED"
            and sacct_state(ids["distill:2"]) == "FAILED")
    assert [n for n in NAMES if runs(tmp, n)] == ["convert", "train", "distill:1", "distill:2"]
    code, out, _ = run_main(["status", *args[:-2]], capsys)
    assert "distill:2   -        " + ids["distill:2"] in out and "FAILED" in out

    (tmp / "fail_distill:2").unlink()
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    assert "convert     done" in out and "distill:1   done" in out and "distill:2   submit" in out
    new = {n: e["job_id"] for n, e in jobs_json(tmp).items()}
    assert all(new[n] == ids[n] for n in NAMES[:3]) and all(new[n] != ids[n] for n in NAMES[3:])
    wait_for(lambda: (tmp / "run" / "evaluation" / "report.json").exists(), 180,
             "the evaluate marker")
    assert {n: len(runs(tmp, n)) for n in NAMES} == {"convert": 1, "train": 1, "distill:1": 1,
                                                     "distill:2": 2, "generate": 1, "export": 1,
                                                     "evaluate": 1}


@slurm
@pytest.mark.slow
def test_slurm_relaunch_keeps_pending_jobs(slurm_run, capsys, monkeypatch):
    """A relaunch while the chain is queued submits nothing and asks the scheduler
    (sacct/squeue)."""
    tmp = slurm_run
    use_fake_stages(monkeypatch, tmp)
    # submitted held: they stay PENDING
    hold = ["--set", "launch.additional_parameters={hold: true}"]
    args = ["--config", str(SMOKE), *sets(tmp), "--executor", "slurm", "--stages", "convert,train"]
    assert run_main([*args, *hold], capsys)[0] == 0
    ids = {n: e["job_id"] for n, e in jobs_json(tmp).items()}
    code, out, _ = run_main([*args, *hold], capsys)
    assert (code == 0 and "nothing to submit" in out
            and f"queued (job {ids['train']} PENDING)" in out)
    code, out, _ = run_main(["status", "--config", str(SMOKE),
                             *sets(tmp, "launch.additional_parameters={hold: true}")], capsys)
    assert f"train       -        {ids['train']:<10} PENDING" in out
    subprocess.run(["scontrol", "release", ids["convert"], ids["train"]], check=True, timeout=30)
    wait_for(lambda: (tmp / "run" / "DONE.json").exists(), 120, "the train marker")


@slurm
@pytest.mark.slow
def test_slurm_requeue_on_the_time_limit_signal(slurm_run, capsys, monkeypatch):
    """SLURM's USR1 before the time limit: checkpoint (stage exits 75), requeue with the same job
    id, resume.

    SLURM may make a requeued job eligible again only up to two minutes later, hence the long wait.
    """
    tmp = slurm_run
    use_fake_stages(monkeypatch, tmp)
    (tmp / "stop_train").touch()
    finish(load_config(SMOKE, overrides(tmp)), "convert")
    args = ["--config", str(SMOKE),
            *sets(tmp, "launch.signal_seconds=45", "launch.train.time_minutes=1"),
            "--executor", "slurm", "--stages", "train"]
    assert run_main(args, capsys)[0] == 0
    job_id = jobs_json(tmp)["train"]["job_id"]
    wait_for(lambda: (tmp / "run" / "DONE.json").exists(), 600,
             "the requeued train job to finish", poll=5)
    assert runs(tmp, "train") == [job_id, job_id]  # same job id, two runs
    wait_for(lambda: sacct_state(job_id) == "COMPLETED", 60, "COMPLETED in sacct")


def real_stages_missing() -> list[str]:
    from pipeline.launch.plan import MODULES

    return [m for m in MODULES.values() if importlib.util.find_spec(m) is None]


@slurm
@pytest.mark.slow
@pytest.mark.skipif(bool(real_stages_missing()),
                    reason=f"stage modules missing: {real_stages_missing()}")
def test_slurm_smoke_chain(slurm_run, capsys):
    """The whole smoke chain through real SLURM with the real stage commands (several minutes
    on 2 CPUs)."""
    tmp = slurm_run
    # ds2 (6480 voxels) instead of the smoke config's ds3 keeps this chain to a few minutes
    # on 2 CPUs
    small = ["data.geometry=ds2", f"data.inputs=[{tmp}/standin.hdf5]", f"data.store={tmp}/s.zarr",
             "data.standin.n=256", "data.global_batch_size=8", f"evaluate.reference={tmp}/ref.hdf5",
             f"generate.energies_from={tmp}/ref.hdf5", "evaluate.reference_standin.n=48",
             "generate.block_size=128", "evaluate.classifier_epochs=2"]
    args = ["--config", str(SMOKE), "--set", f"run.dir={tmp}/run",
            *[x for s in small for x in ("--set", s)], "--executor", "slurm"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    report = tmp / "run" / "evaluation" / "report.json"
    ids = {n: e["job_id"] for n, e in jobs_json(tmp).items()}
    wait_for(lambda: report.exists() or any(sacct_state(i).split()[0]
                                            in ("FAILED", "CANCELLED", "TIMEOUT")
                                            for i in ids.values()),
             1800, "the evaluation report", poll=10)
    assert report.exists(), {n: sacct_state(i) for n, i in ids.items()}
    code, out, _ = run_main(["status", *args[:-2]], capsys)
    assert all(f"{n:<11} done" in out for n in NAMES)


@slurm
@pytest.mark.slow
def test_slurm_every_task_is_a_rank(slurm_run, capsys):
    """Real stage commands with two tasks each: convert's tasks form one MPI job (srun --mpi=pmi2,
    the PMI fd passed to the stage process), train's tasks are two DeepSpeed ranks found from the
    srun task's SLURM env."""
    tmp = slurm_run
    two = ["--set", "launch.convert.tasks_per_node=2", "--set", "launch.convert.cpus_per_task=1",
           "--set", "launch.train.tasks_per_node=2", "--set", "launch.train.cpus_per_task=1"]
    args = ["--config", str(SMOKE), "--set", f"run.dir={tmp}/run", *two, "--executor", "slurm"]
    code, out, err = run_main([*args, "--stages", "convert,train"], capsys)
    assert code == 0, err
    ids = {n: e["job_id"] for n, e in jobs_json(tmp).items()}
    wait_for(lambda: sacct_state(ids["train"]) not in ("PENDING", "RUNNING", "UNKNOWN"), 1200,
             "train", 5)
    assert sacct_state(ids["convert"]) == "COMPLETED" and sacct_state(ids["train"]) == "COMPLETED"
    assert (tmp / "run" / "DONE.json").exists()
    log = (tmp / "run" / "launch" / "logs" / ids["train"] / f"{ids['train']}_0_log.out").read_text()
    assert "on 2 rank(s) (slurm" in log
