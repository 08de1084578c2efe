"""Per-shower noise, computed on the device as a pure function of (shower seed, stream, step, element).

``NoiseSource(seeds, device)(shape, step, stream)`` returns ``(B, *shape)`` standard normal noise. It is
counter-based: nothing is drawn from a stateful generator, so

- row i depends only on ``(seeds[i], stream, step)``: splitting, regrouping or reordering a batch, or
  spreading it over any number of ranks, gives each shower exactly the same noise;
- the initial noise (step 0) and every later step's noise are independent; the layer and voxel
  samplers (``stream`` "layers" / "voxels") and the incident energies ("energy") use separate streams;
- it runs in batched integer arithmetic where the tensors live (no host loop, no host-to-device copy
  of the noise): bit-identical between runs on one device type, and equal to float32 rounding of
  ``log``/``cos``/``sin`` between CPU and GPU (the integers are identical everywhere).

How: on the host, a vectorised splitmix64 turns each (seed, stream, step) into four 32-bit keys
(two odd multipliers, two offsets) per row, :func:`stream_keys`. On the device, element pair j of a row
gets two 32-bit words ``h = lowbias32((j * mult + offset) mod 2**32)`` (C. Wellons' integer hash: a
bijection with full avalanche), which Box-Muller turns into two normals. Integers are kept below
2**63 in int64 tensors (multipliers < 2**31, counters < 2**32), so no operation overflows on any
device. ``shower_seed(seed, i)`` names shower i of a generation seed (``pipeline.generate``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

#: stream name -> id mixed into the keys
STREAMS: dict[str, int] = {"layers": 1, "voxels": 2, "energy": 3}
SHOWER_INDEX_BITS = 40  # shower seeds are (generation seed << 40) | index
_M32 = 0xFFFFFFFF
_CPU_CHUNK = 1 << 18  # elements per pass on the CPU (keeps the temporaries in cache); any value gives the same noise


def shower_seed(seed: int, index: int) -> int:
    """The seed of shower ``index`` of a generation with seed ``seed`` (unique for index < 2**40)."""
    if not 0 <= index < 2**SHOWER_INDEX_BITS or seed < 0:
        raise ValueError(f"shower index must be in [0, 2**{SHOWER_INDEX_BITS}) and seed >= 0, got {index}, {seed}")
    return (int(seed) << SHOWER_INDEX_BITS) | int(index)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _seed_words(seeds: Sequence[int], stream: str, step: int, n_words: int) -> np.ndarray:
    """``(n_words, B)`` uint64 words, a hash of each (seed, stream, step)."""
    s = np.asarray([int(v) for v in seeds], dtype=np.uint64)  # raises OverflowError on a negative seed
    if step < 0 or step >= 2**32:
        raise ValueError(f"step must be in [0, 2**32), got {step}")
    base = _splitmix64(_splitmix64(s) ^ np.uint64((STREAMS[stream] << 32) | step))
    return np.stack([_splitmix64(base + np.uint64(i)) for i in range(n_words)])


def stream_keys(seeds: Sequence[int], stream: str, step: int) -> np.ndarray:
    """``(4, B)`` int64 keys per shower: multiplier and offset of the two hash counters."""
    if any(int(v) < 0 for v in seeds):
        raise ValueError(f"seeds must be non-negative, got {min(int(v) for v in seeds)}")
    w = _seed_words(seeds, stream, step, 2)
    lo, hi = w & np.uint64(_M32), w >> np.uint64(32)
    mult = lambda x: (x & np.uint64(0x7FFFFFFF)) | np.uint64(1)  # noqa: E731 - odd, < 2**31
    return np.stack([mult(lo[0]), hi[0], mult(lo[1]), hi[1]]).astype(np.int64)


def uniform_from_seeds(seeds: Sequence[int]) -> np.ndarray:
    """One uniform float64 in [0, 1) per shower seed, from its "energy" stream (batch-independent)."""
    if len(seeds) == 0:
        return np.zeros(0, dtype=np.float64)
    if any(int(v) < 0 for v in seeds):
        raise ValueError(f"seeds must be non-negative, got {min(int(v) for v in seeds)}")
    return (_seed_words(seeds, "energy", 0, 1)[0] >> np.uint64(11)).astype(np.float64) * 2.0**-53


def lowbias32_(x: Tensor) -> Tensor:
    """In place: Wellons' lowbias32 hash of int64 values in [0, 2**32) (products stay below 2**63)."""
    x ^= x >> 16
    x *= 0x21F0AAAD
    x &= _M32
    x ^= x >> 15
    x *= 0x735A2D97
    x &= _M32
    x ^= x >> 15
    return x


def _hash_words(counter: Tensor, mult: Tensor, offset: Tensor) -> Tensor:
    """``lowbias32((counter * mult + offset) mod 2**32)`` for rows of keys: (rows,) x (m,) -> (rows, m)."""
    x = counter[None, :] * mult[:, None]
    x += offset[:, None]
    x &= _M32
    return lowbias32_(x)


def counter_normals(keys: Tensor, n: int, chunk: int | None = None) -> Tensor:
    """``(B, n)`` float32 standard normals from ``(4, B)`` int64 keys (on the device of ``keys``).

    Element pair j of a row: ``r = sqrt(-2 log u1)``, ``theta = 2 pi u2`` -> elements j and j + ceil(n/2)
    are ``r cos theta`` and ``r sin theta``. ``chunk`` (elements per pass) changes speed, never values.
    """
    if not 0 <= n < 2**33:
        raise ValueError(f"at most 2**33 noise elements per shower, got {n}")
    b, half = keys.shape[1], (n + 1) // 2
    out = torch.empty(b, 2 * half, dtype=torch.float32, device=keys.device)
    if b == 0 or half == 0:
        return out[:, :n]
    counter = torch.arange(half, dtype=torch.int64, device=keys.device)
    chunk = chunk or (_CPU_CHUNK if keys.device.type == "cpu" else b * half)
    rows = max(1, chunk // half)
    for r0 in range(0, b, rows):
        k = keys[:, r0:r0 + rows]
        radius = _hash_words(counter, k[0], k[1]).to(torch.float32)
        radius.add_(0.5).mul_(2.0**-32).log_().mul_(-2.0).sqrt_()  # u1 in (0, 1): never log(0)
        angle = _hash_words(counter, k[2], k[3]).to(torch.float32).mul_(2.0 * math.pi * 2.0**-32)
        torch.mul(radius, torch.cos(angle), out=out[r0:r0 + rows, :half])
        torch.mul(radius, torch.sin(angle), out=out[r0:r0 + rows, half:])
    return out[:, :n]


class NoiseSource:
    """Gaussian noise for a batch of showers identified by their seeds (see the module doc)."""

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.seeds = [int(s) for s in seeds]
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be non-negative, got {min(self.seeds)}")
        self.device, self.dtype = torch.device(device), dtype

    def __len__(self) -> int:
        return len(self.seeds)

    def __call__(self, shape: Sequence[int], step: int, stream: str) -> Tensor:
        """``(B, *shape)`` standard normal noise; step 0 is the initial noise of a sampler."""
        keys = torch.from_numpy(stream_keys(self.seeds, stream, step)).to(self.device, non_blocking=True)
        z = counter_normals(keys, math.prod(shape))
        return z.reshape(len(self.seeds), *shape).to(self.dtype)
