"""``python -m pipeline.evaluate``: CaloChallenge metrics of a generated sample against a reference
(see :mod:`pipeline.evaluation.command`)."""

import sys

from pipeline.evaluation.command import main

if __name__ == "__main__":
    sys.exit(main())
