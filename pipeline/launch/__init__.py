"""The whole chain from a login node (command ``python -m pipeline.launch``): one submitit job per stage,
chained with ``afterok``, idempotent across relaunches.

Owns: the stage graph and the plan of one launch (:mod:`.plan`), the recorded jobs and their scheduler
states (:mod:`.jobs`), the submitit executors (:mod:`.executors`), the callable each job runs
(:mod:`.stage_job`) and the command (:mod:`.command`); also the job step every ``slurm/`` script runs
(:mod:`.job_step`), which applies the same requeue policy. Stages are run as ``python -m`` commands, so this
package imports no stage package. May import: :mod:`pipeline.runtime`, :mod:`pipeline.config`,
:mod:`pipeline.data`.
"""


def main(argv: "list[str] | None" = None) -> int:
    """The ``pipeline.launch`` command (imported on use: ``import pipeline.launch`` stays light)."""
    from pipeline.launch.command import main as command_main

    return command_main(argv)
