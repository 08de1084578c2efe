"""This process's peak resident memory, as every stage records it (logs, block markers, reports)."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
