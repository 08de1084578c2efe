"""Wall-time limits of a stage (``--time-limit 3:55:00``), counted from the start of the command.

:data:`COMMAND_STARTED` is taken when this module is first imported, which the stage commands do before
anything slow (torch, DeepSpeed, the data), so a limit covers the whole command.
"""

from __future__ import annotations

import re
import time

COMMAND_STARTED = time.monotonic()


def parse_duration(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``30m``, ``2h``, ``1.5h``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    s = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([smhd]?)", s)
    if m:
        return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if m and m.group(3) is not None:
        days, parts = int(m.group(1) or 0), [int(p) for p in m.group(2, 3, 4) if p is not None]
        if m.group(1) is None and len(parts) == 2:
            parts = [0] + parts  # MM:SS
        hours, minutes, seconds = parts if len(parts) == 3 else (parts + [0])
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    raise ValueError(f"cannot parse time limit {text!r} (examples: 3600, 90m, 2h, 3:55:00, 1-00:00:00)")
