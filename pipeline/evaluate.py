"""``python -m pipeline.evaluate``: CaloChallenge metrics of a generated sample against a reference
(see :mod:`pipeline.evaluation.command`)."""

from __future__ import annotations

from typing import Sequence

from pipeline.runtime.signals import catch_from_start, run_main


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.evaluation.command import main as command

    return command(argv)


if __name__ == "__main__":
    catch_from_start(immediate=True)  # before the heavy imports: a stop signal during start-up is not fatal
    run_main(main)
