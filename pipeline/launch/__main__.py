"""``python -m pipeline.launch``: submit the chain (see :mod:`pipeline.launch.command`)."""

import sys

from pipeline.launch.command import main

if __name__ == "__main__":
    sys.exit(main())
