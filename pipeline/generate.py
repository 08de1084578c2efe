"""``python -m pipeline.generate``: mass generation into a zarr sample (see :mod:`pipeline.generation.command`)."""

import sys

from pipeline.generation.command import main

if __name__ == "__main__":
    sys.exit(main())
