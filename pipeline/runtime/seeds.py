"""Seeds derived from integer keys, so that every (run seed, rank, purpose) gets its own stream."""

from __future__ import annotations

import numpy as np


def seed_for(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (run seed, rank, purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))
