"""The stage graph of ``pipeline.launch`` and the plan of one launch (pure: no scheduler, no
submitit).

The chain is linear: ``convert -> train -> distill:1 .. distill:K -> generate -> export ->
evaluate``; each stage's job starts ``afterok`` the previous one. A stage is *done* when its
completion marker exists (:mod:`pipeline.data.run_layout`); done stages are never submitted again,
and a stage whose job from an earlier launch is still pending or running is kept rather than
submitted twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

from pipeline.config import Config, ConfigError, StageResources
from pipeline.config.launch_resources import STAGES
from pipeline.data import run_layout
from pipeline.data.shower_store import read_attrs

#: scheduler states of a job that will still run (sacct/squeue spelling; submitit's LocalJob
#: says RUNNING)
LIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                         "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "STAGE_OUT",
                         "SIGNALING", "RESV_DEL_HOLD", "PREEMPTED"})
MODULES = {"convert": "data_tools.convert", "train": "pipeline.train",
           "distill": "pipeline.distill", "generate": "pipeline.generate",
           "export": "data_tools.export", "evaluate": "pipeline.evaluate"}


@dataclass(frozen=True)
class Stage:
    """One node of the chain: ``name`` is ``kind`` or ``distill:K``."""

    name: str
    kind: str  # a key of STAGES: the launch.<kind> resources and the module
    marker: Path  # exists when the stage is complete (convert: the store, complete in its attrs)
    workdir: Optional[Path]  # where the stage leaves its REQUEUE marker
    args: tuple[str, ...] = ()

    def command(self, config: str | Path, python: str = "python") -> list[str]:
        return [python, "-m", MODULES[self.kind], "--config", str(config), *self.args]

    def is_done(self) -> bool:
        if self.kind == "convert":
            return (read_attrs(self.marker) or {}).get("complete") is True
        return self.marker.is_file()

    def marker_state(self) -> str:
        """``done``, ``requeue`` (stopped early, resumes when re-run) or ``-``."""
        if self.is_done():
            return "done"
        if self.workdir is not None and (self.workdir / run_layout.REQUEUE_FILE).is_file():
            return "requeue"
        return "-"


def is_live(state: Optional[str]) -> bool:
    """Whether a scheduler state (``CANCELLED by 0`` spelling accepted) means the job will still
    run."""
    return bool(state) and state.split()[0].rstrip("+").upper() in LIVE_STATES


def chain(cfg: Config) -> list[Stage]:
    """Every stage of the run in dependency order (a run training the layer network alone ends with
    its last distillation stage: another run's generation takes it through
    ``generate.layer_model``)."""
    out = [Stage("convert", "convert", Path(cfg.data.store), None),
           Stage("train", "train", run_layout.train_dir(cfg) / run_layout.DONE_FILE,
                 run_layout.train_dir(cfg))]
    for k in range(1, run_layout.n_stages(cfg) + 1):
        d = run_layout.distill_dir(cfg, k)
        out.append(Stage(f"distill:{k}", "distill", d / run_layout.DONE_FILE, d,
                         ("--stage", str(k))))
    if "voxels" not in cfg.train.networks:
        return out
    sample = run_layout.sample_path(cfg)
    out += [Stage("generate", "generate", run_layout.sample_manifest(sample),
                  run_layout.sample_blocks_dir(sample)),
            Stage("export", "export", run_layout.export_marker(cfg), None),
            Stage("evaluate", "evaluate", run_layout.evaluation_dir(cfg) / run_layout.REPORT_FILE,
                  run_layout.evaluation_dir(cfg))]
    return out


STAGES_HELP = ("comma list of stages: convert, train, distill (all K stages), distill:K, "
               "distill:A-B, generate, export, evaluate, or all (default)")


def select(stages: Sequence[Stage], spec: Optional[str]) -> list[str]:
    """Names of the stages picked by ``--stages`` (see STAGES_HELP), in chain order."""
    if spec is None or spec.strip() in ("", "all"):
        return [s.name for s in stages]
    k_max = sum(s.kind == "distill" for s in stages)
    picked: set[str] = set()
    for item in (i.strip() for i in spec.split(",")):
        m = re.fullmatch(r"distill:(\d+)(?:-(\d+))?", item)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if not 1 <= lo <= hi <= k_max:
                have = f"distill:1..distill:{k_max}" if k_max else "no distillation stages"
                raise ConfigError(f"--stages: {item}: this config has {have} "
                                  f"(sampling.steps -> distill.final_steps)")
            picked.update(f"distill:{k}" for k in range(lo, hi + 1))
        elif item in STAGES:
            picked.update(s.name for s in stages if s.kind == item)
        else:
            raise ConfigError(f"--stages: unknown stage {item!r}; {STAGES_HELP}")
    return [s.name for s in stages if s.name in picked]


Action = Literal["done", "queued", "submit", "resubmit", "skip"]


@dataclass
class Step:
    """What one launch does with one stage.

    ``done``: marker exists; ``queued``: its job from an earlier launch is pending/running and kept;
    ``submit``: a new job; ``resubmit``: cancel its pending job (which waits on a job being
    replaced) and submit a new one; ``skip``: not selected and not needed.
    """

    stage: Stage
    action: Action
    job_id: Optional[str] = None  # the kept job, or the pending one that is replaced
    state: Optional[str] = None
    after: Optional[str] = None  # name of the step this one waits for (afterok), if any
    notes: list[str] = field(default_factory=list)

    @property
    def submits(self) -> bool:
        return self.action in ("submit", "resubmit")


def build_plan(stages: Sequence[Stage], selected: Sequence[str],
               jobs: Callable[[str], tuple[Optional[str], Optional[str]]]) -> list[Step]:
    """The launch plan; ``jobs(name)`` gives the stage's recorded job id and its scheduler state
    (or Nones).

    Raises ConfigError when a selected stage needs an earlier stage that is neither done, queued
    nor selected.
    """
    plan: list[Step] = []
    for stage in stages:
        job_id, state = jobs(stage.name)
        prev = plan[-1] if plan else None
        after = (prev.stage.name
                 if prev is not None and prev.action in ("queued", "submit", "resubmit") else None)
        upstream_new = prev is not None and prev.submits
        if stage.is_done():
            step = Step(stage, "done", job_id, state)
        elif job_id is not None and is_live(state):
            if not upstream_new:
                step = Step(stage, "queued", job_id, state, after)
            elif state.split()[0].upper() == "PENDING":
                step = Step(stage, "resubmit", job_id, state, after,
                            [f"its pending job {job_id} waits on a job being replaced: cancelled"])
            else:
                raise ConfigError(f"stage {stage.name}: job {job_id} is {state} but "
                                  f"{prev.stage.name} before it is not done; cancel it "
                                  f"(scancel {job_id}) and launch again")
        elif stage.name in selected:
            step = Step(stage, "submit", job_id, state, after)
            if prev is not None and prev.action == "skip":
                raise ConfigError(f"--stages: {stage.name} needs {prev.stage.name}, which is "
                                  f"neither done nor queued; add it to --stages")
        else:
            step = Step(stage, "skip", job_id, state)
        plan.append(step)
    return plan


def format_plan(plan: Sequence[Step], resources: Callable[[Stage], StageResources],
                command: Callable[[Stage], list[str]]) -> str:
    """Human-readable plan: one line per stage, then resources, dependency and command of new
    jobs."""
    lines = []
    for step in plan:
        job = f"job {step.job_id} {step.state}" if step.job_id and step.state else ""
        what = {"done": "done (marker exists)", "queued": f"queued ({job})", "skip": "not selected",
                "submit": "submit", "resubmit": f"resubmit (cancel {job})"}[step.action]
        lines.append(f"  {step.stage.name:<11} {what}")
        if step.submits or step.action == "queued":
            lines.append(f"      after: {step.after or '-'}")
        if step.submits:
            lines.append(f"      resources: {resources(step.stage).describe()}")
            lines.append(f"      command: {' '.join(command(step.stage))}")
        lines.extend(f"      note: {note}" for note in step.notes)
    return "\n".join(lines)
