"""Per-shower noise: every shower's Gaussian noise depends only on its seed, never on its batch.

``NoiseSource(seeds)(shape, step, stream)`` returns ``(B, *shape)``; row i is drawn from a CPU
``torch.Generator`` seeded with a hash of ``(seeds[i], stream, step)`` (numpy ``SeedSequence``), so

- splitting or regrouping a batch gives each shower exactly the same noise;
- the initial noise (step 0) and every later step's noise are independent draws;
- the layer and voxel samplers (``stream`` "layers" / "voxels") use independent streams;
  ``shower_seed(seed, i)`` names shower i of a generation seed (``pipeline.generate``), whose
  incident energy comes from the "energy" stream (:func:`uniform_from_seeds`).

Drawing on the CPU keeps the noise identical on every device type; it is moved to ``device``
afterwards (a few ms per batch, small next to the network evaluations).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

#: stream name -> id mixed into the seed hash
STREAMS: dict[str, int] = {"layers": 1, "voxels": 2, "energy": 3}


def item_seed(seed: int, stream: str, step: int) -> int:
    """64-bit generator seed for one shower, stream and step."""
    if seed < 0 or step < 0:
        raise ValueError(f"seeds and steps must be non-negative, got seed={seed}, step={step}")
    return int(np.random.SeedSequence([int(seed), STREAMS[stream], int(step)]).generate_state(1, np.uint64)[0])


SHOWER_INDEX_BITS = 40  # shower seeds are (generation seed << 40) | index


def shower_seed(seed: int, index: int) -> int:
    """The seed of shower ``index`` of a generation with seed ``seed`` (unique for index < 2**40)."""
    if not 0 <= index < 2**SHOWER_INDEX_BITS or seed < 0:
        raise ValueError(f"shower index must be in [0, 2**{SHOWER_INDEX_BITS}) and seed >= 0, got {index}, {seed}")
    return (int(seed) << SHOWER_INDEX_BITS) | int(index)


def uniform_from_seeds(seeds: Sequence[int]) -> np.ndarray:
    """One uniform float64 in [0, 1) per shower seed, from its "energy" stream (batch-independent)."""
    return np.array([(item_seed(s, "energy", 0) >> 11) * 2.0**-53 for s in seeds], dtype=np.float64)


class NoiseSource:
    """Gaussian noise for a batch of showers identified by their seeds."""

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.seeds = [int(s) for s in seeds]
        self.device, self.dtype = torch.device(device), dtype

    def __len__(self) -> int:
        return len(self.seeds)

    def __call__(self, shape: Sequence[int], step: int, stream: str) -> Tensor:
        """``(B, *shape)`` standard normal noise; step 0 is the initial noise of a sampler."""
        gen = torch.Generator(device="cpu")
        rows = []
        for seed in self.seeds:
            gen.manual_seed(item_seed(seed, stream, step))
            rows.append(torch.randn(tuple(shape), generator=gen, dtype=torch.float32))
        return torch.stack(rows).to(device=self.device, dtype=self.dtype)
