"""One console script, ``calo``, with a subcommand per stage (each also runs as ``python -m``)."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

#: subcommand -> module whose ``main(argv)`` runs it
COMMANDS: dict[str, str] = {
    "simulate": "data_tools.simulate",
    "convert": "data_tools.convert",
    "inspect": "data_tools.inspect",
    "plot-showers": "data_tools.plot_showers",
    "demo": "pipeline.demo",
    "info": "pipeline.info",
    "train": "pipeline.train",
    "distill": "pipeline.distill",
    "generate": "pipeline.generate",
    "evaluate": "pipeline.evaluate",
    "launch": "pipeline.launch",
    "export": "data_tools.export",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: calo COMMAND [ARGS...]\n\ncommands:")
        for name, module in COMMANDS.items():
            print(f"  {name:14s} python -m {module}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)
