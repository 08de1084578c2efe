"""``python -m pipeline.info``: parameters and FLOPs per shower of a config's models
(see :mod:`pipeline.tools.info`)."""

import sys

from pipeline.tools.info import main

if __name__ == "__main__":
    sys.exit(main())
