"""``python -m pipeline.train``: train the two networks (see :mod:`pipeline.training.train_command`)."""

import sys

from pipeline.runtime import time_limit  # noqa: F401  (first: --time-limit counts from here)
from pipeline.training.train_command import main

if __name__ == "__main__":
    sys.exit(main())
