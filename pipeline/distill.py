"""``python -m pipeline.distill --stage K``: one progressive-distillation stage
(see :mod:`pipeline.training.distill_command`)."""

from __future__ import annotations

from typing import Sequence

from pipeline.runtime import time_limit  # noqa: F401  (the clock of --time-limit starts here)
from pipeline.runtime.signals import catch_from_start, run_main


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.training.distill_command import main as command

    return command(argv)


if __name__ == "__main__":
    catch_from_start()  # before the heavy imports: a stop signal during start-up is not fatal
    run_main(main)
