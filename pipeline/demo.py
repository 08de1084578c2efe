"""``python -m pipeline.demo``: the whole chain on one config on this machine (see :mod:`pipeline.tools.demo`)."""

import sys

from pipeline.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
