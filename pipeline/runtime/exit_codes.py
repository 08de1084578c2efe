"""Exit codes shared by every stage command; ``slurm/`` scripts and ``pipeline.launch`` rely on them.

- ``0``  done (or already done).
- ``2``  config, input or launcher error, found before any work or process group starts.
- ``3``  non-finite training loss: stopped without saving; the last good checkpoint is kept.
- ``74`` (EX_IOERR) writing failed (disk full, I/O error): what was complete before stays complete and
  nothing half-written is published; free space or fix the filesystem, then re-run.
- ``75`` (EX_TEMPFAIL) stopped early on SIGUSR1/SIGTERM or before a time limit, after saving what a re-run
  resumes from (and, for training, a ``REQUEUE`` marker): requeue the job or re-run the same command.
  ``srun`` and ``mpirun`` pass the code on; ``torchrun`` reports any non-zero worker exit as 1, so
  scripts using it should test for the ``REQUEUE`` file instead.
"""

EXIT_DONE = 0
EXIT_CONFIG = 2
EXIT_NONFINITE = 3
EXIT_STORAGE = 74
EXIT_REQUEUE = 75
