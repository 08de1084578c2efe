"""Generating a rank's blocks: batches through the sampler, whole shards into the sample store
(written beside the computation), a marker per finished block; plus the device and the batch size
that fill it."""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.sample_store import SampleStore
from pipeline.diffusion import shower_seed
from pipeline.generation.energies import IncidentEnergies
from pipeline.generation.sampler import Sampler
from pipeline.generation.shard_writer import ShardWriter
from pipeline.runtime.files import utc_now
from pipeline.runtime.gpu_claim import bind_local_gpu
from pipeline.runtime.memory import peak_rss_mb
from pipeline.runtime.precision import autocast
from pipeline.runtime.signals import StopSignals

CPU_BATCH = 64


def pick_device(local_rank: int) -> torch.device:
    """This local rank's GPU, or the CPU."""
    if torch.cuda.is_available():
        # more ranks than GPUs on a node is an error
        return torch.device("cuda", bind_local_gpu(local_rank))
    return torch.device("cpu")


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def auto_batch_size(sampler: Sampler, device: torch.device, precision: str,
                    shard_rows: int) -> int:
    """Showers per forward pass: the largest divisor of ``shard_rows`` (:func:`generate_blocks` cuts
    batches at shard boundaries, so any other size leaves a short batch in every shard, padded to
    full size under ``generate.compile``) that fits ~70 % of the free GPU memory; on the CPU the
    largest up to ``CPU_BATCH``.

    Memory per shower is the slope between 16 and 64 showers, measured on the uncompiled networks
    (a compiled sampler would compile twice more per network) after a warm-up call (cuDNN's
    algorithm search and workspaces are not per-shower memory)."""
    if device.type != "cuda":
        return largest_divisor(shard_rows, CPU_BATCH)
    plain = replace(sampler, **{name: replace(spec,
                                              model=getattr(spec.model, "_orig_mod", spec.model))
                                for name, spec in (("layer", sampler.layer),
                                                   ("voxel", sampler.voxel))})

    def peak(b: int) -> int:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with autocast(precision, device):
            plain(torch.full((b,), 1e4, dtype=torch.float64), list(range(b)))
        return torch.cuda.max_memory_allocated(device) - base

    peak(16)  # warm-up
    small, large = peak(16), peak(64)
    per_shower = max((large - small) / 48, 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    fits = int((0.7 * free - (small - 16 * per_shower)) // per_shower)
    return largest_divisor(shard_rows, max(1, fits))


def generate_blocks(sample: SampleStore, sampler: Sampler, energies: IncidentEnergies,
                    blocks: list[int], *, batch_size: int, precision: str, device: torch.device,
                    rank: int, signals: StopSignals, pad: bool, progress: bool,
                    writer_threads: int = 2) -> bool:
    """Generate and write ``blocks``; False if a stop signal ended it early (the current block is
    redone).

    The device computes batch k + 1 while batch k travels to the host and earlier shards are
    compressed and written by ``writer_threads`` threads (:mod:`pipeline.generation.shard_writer`;
    0: all in this thread).
    """
    total = sum(b - a for a, b in map(sample.rows, blocks))
    shard = sample.store.shard_rows
    bar = tqdm(total=total, unit="shower", unit_scale=True, disable=not progress, desc="generate",
               dynamic_ncols=True)

    def finished(block: int, info: dict[str, Any]) -> None:
        start, stop = sample.rows(block)
        seconds = info.pop("finished") - info.pop("t0")
        sample.mark_done(block, {"seconds": seconds, **info,
                                 "showers_per_s": (stop - start) / seconds,
                                 "peak_rss_mb": round(peak_rss_mb(), 1)})
        if not progress:
            print(f"generate: rank {rank} block {block} ({start}-{stop}) "
                  f"{(stop - start) / seconds:.1f} showers/s", file=sys.stderr)

    writer = ShardWriter(sample, writer_threads, finished)
    try:
        for block in blocks:
            start, stop = sample.rows(block)
            writer.begin_block(block, {"t0": time.perf_counter(), "started_at": utc_now(),
                                       "rank": rank, "host": socket.gethostname(),
                                       "device": str(device), "precision": precision,
                                       "batch_size": batch_size, "writer_threads": writer_threads})
            e_block = energies(start, stop)
            for s0 in range(start, stop, shard):
                s1 = min(s0 + shard, stop)
                writer.begin_shard(s0, s1, e_block[s0 - start:s1 - start])
                for b0 in range(s0, s1, batch_size):
                    if signals.received:
                        return False
                    b1 = min(b0 + batch_size, s1)
                    idx = list(range(b0, b1))
                    if pad:  # constant shapes for torch.compile; padded rows are dropped
                        idx += [idx[-1]] * (batch_size - len(idx))
                    e = torch.from_numpy(e_block[np.array(idx) - start])
                    with autocast(precision, device):
                        showers = sampler(e, [shower_seed(sample.plan["seed"], i) for i in idx])
                    writer.add(b0, showers[: b1 - b0])
                    bar.update(b1 - b0)
                writer.end_shard()
            writer.end_block()
    finally:
        writer.close()
        bar.close()
    return True
