"""``python -m pipeline.distill --stage K``: one progressive-distillation stage
(see :mod:`pipeline.training.distill_command`)."""

import sys

from pipeline.runtime import time_limit  # noqa: F401  (first: --time-limit counts from here)
from pipeline.training.distill_command import main

if __name__ == "__main__":
    sys.exit(main())
