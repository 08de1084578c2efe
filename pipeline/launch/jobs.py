"""The jobs a launch submitted (``<run.dir>/launch/jobs.json``) and their states as the scheduler reports them."""

from __future__ import annotations

import getpass
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional


class JobRecord:
    """``<run.dir>/launch/jobs.json``: the last job submitted per stage (and every earlier one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"stages": {}, "history": []}

    def get(self, stage: str) -> Optional[dict[str, Any]]:
        return self.data["stages"].get(stage)

    def put(self, stage: str, **entry: Any) -> None:
        old = self.data["stages"].get(stage)
        if old is not None:
            self.data["history"].append({"stage": stage, **old})
        self.data["stages"][stage] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def job_states(record: JobRecord) -> dict[str, str]:
    """Scheduler state of every recorded job: SLURM via submitit's sacct watcher (squeue for jobs sacct does
    not know yet; UNKNOWN when neither does), local jobs by their controller's PID (RUNNING or ENDED)."""
    entries = record.data["stages"].values()
    slurm = sorted({e["job_id"] for e in entries if e.get("executor") == "slurm"})
    states = {j: "UNKNOWN" for j in slurm}
    if slurm and shutil.which("sacct"):
        import submitit

        watcher = submitit.SlurmJob.watcher
        for job_id in slurm:
            watcher.register_job(job_id)
        watcher.update()
        states.update({j: watcher.get_state(j, mode="cache") for j in slurm})
    unknown = [j for j in slurm if states[j] == "UNKNOWN"]
    if unknown and shutil.which("squeue"):  # sacct lags behind (or there is no accounting): ask the controller
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-u", getpass.getuser()], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0:
            raise SchedulerError(f"cannot ask SLURM about jobs {', '.join(unknown)}: squeue: {out.stderr.strip()}")
        queue = dict(line.split(None, 1) for line in out.stdout.splitlines() if len(line.split()) == 2)
        states.update({j: queue[j] for j in unknown if j in queue})
    for entry in entries:
        if entry.get("executor") == "local":
            states[entry["job_id"]] = "RUNNING" if _controller_alive(entry["job_id"]) else "ENDED"
    return states


def _controller_alive(pid: str) -> bool:
    """Whether a local job's controller (``python -m submitit.local._local``) still runs."""
    try:
        return b"submitit" in Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


class SchedulerError(RuntimeError):
    """The scheduler cannot be asked about recorded jobs: submitting now could duplicate them."""
