"""Overlapping generation with its output: device-to-host copies, compression and zarr writes run beside
the networks.

The generating loop hands each batch to :meth:`ShardWriter.add` and goes on to the next one. On a GPU the
batch is copied into pinned host memory with ``non_blocking=True`` on a copy stream and a CUDA event marks when
it has arrived; a worker thread waits for the events of a whole shard, assembles it and writes it (zarr
compresses in that thread, outside the GIL). At most ``threads + 1`` shards are in flight, so memory does
not grow with the sample. A block's marker is written by :meth:`ShardWriter.poll` only after all of its
shards are on disk, in block order; after a stop, :meth:`close` lets the shards already handed over finish
and leaves the unfinished block without a marker (it is redone). ``threads = 0`` is the serial path:
every write happens in the calling thread, with identical bytes on disk.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from pipeline.data.sample_store import SampleStore


@dataclass
class _HostBatch:
    rows: slice  # rows of the shard
    data: torch.Tensor  # on the host (pinned when it came from a GPU)
    ready: torch.cuda.Event | None  # recorded after the copy; None when already on the host


@dataclass
class _Block:
    block: int
    writes: list[Future] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # every shard handed over


_copy_streams: dict[int, torch.cuda.Stream] = {}  # device index -> the stream its device-to-host copies run on


def to_host(showers: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying float32 ``showers`` to the host; returns the host tensor and the event to wait for.

    On a GPU the copy runs on a stream of its own (after the kernels that made ``showers``), so the next batch's
    kernels do not queue behind it; ``showers`` stays allocated until the copy is done."""
    if showers.device.type != "cuda":
        return showers.float(), None
    src = showers.float()  # cast on the device
    stream = _copy_streams.setdefault(src.device.index, torch.cuda.Stream(src.device))
    stream.wait_stream(torch.cuda.current_stream(src.device))
    host = torch.empty(src.shape, dtype=torch.float32, pin_memory=True)  # from torch's pinned-memory cache
    event = torch.cuda.Event(blocking=True)  # a writer thread waiting on it sleeps instead of spinning a core
    with torch.cuda.stream(stream):
        host.copy_(src, non_blocking=True)
        event.record(stream)
    src.record_stream(stream)
    return host, event


class ShardWriter:
    """Writes whole shards of ``sample`` on ``threads`` worker threads (0: in the caller) and marks blocks:
    ``on_block(block, info)`` gets the ``info`` given to :meth:`begin_block` plus ``finished``, the
    ``time.perf_counter()`` at which its last shard was written."""

    def __init__(self, sample: SampleStore, threads: int, on_block: Callable[[int, dict[str, Any]], None]) -> None:
        self.sample, self.on_block = sample, on_block
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="shard-writer") if threads else None
        self.slots = threading.BoundedSemaphore(threads + 1)
        self.blocks: deque[_Block] = deque()
        self.shard: tuple[int, int, np.ndarray] | None = None
        self.parts: list[_HostBatch] = []

    # ---------------------------------------------------------- the producer side
    def begin_block(self, block: int, info: dict[str, Any]) -> None:
        self.blocks.append(_Block(block, info=info))

    def begin_shard(self, start: int, stop: int, energies: np.ndarray) -> None:
        self.shard, self.parts = (start, stop, energies), []

    def add(self, first_row: int, showers: torch.Tensor) -> None:
        """Hand over a batch (rows ``first_row ...`` of the sample) of the current shard."""
        start = self.shard[0]  # type: ignore[index]
        data, ready = to_host(showers)
        self.parts.append(_HostBatch(slice(first_row - start, first_row - start + len(showers)), data, ready))
        self.poll()  # mark blocks as soon as their last shard is on disk

    def end_shard(self) -> None:
        """The current shard is complete: write it (on a worker when there are any; waits for a free slot)."""
        start, stop, energies = self.shard  # type: ignore[misc]
        parts, self.shard, self.parts = self.parts, None, []
        self.slots.acquire()
        if self.pool is None:
            future: Future = Future()
            try:
                future.set_result(self._write(start, stop, energies, parts))
            except BaseException as err:
                future.set_exception(err)
        else:
            future = self.pool.submit(self._write, start, stop, energies, parts)
        self.blocks[-1].writes.append(future)
        self.poll()

    def end_block(self) -> None:
        self.blocks[-1].complete = True
        self.poll()

    # --------------------------------------------------------------- the writers
    def _write(self, start: int, stop: int, energies: np.ndarray, parts: list[_HostBatch]) -> float:
        """Assemble and write one shard; returns when it finished (``time.perf_counter``)."""
        try:
            out = np.empty((stop - start, *self.sample.store.showers.shape[1:]), dtype=np.float32)
            for part in parts:
                if part.ready is not None:
                    part.ready.synchronize()
                out[part.rows] = part.data.numpy()
            self.sample.write(start, out, energies)
            return time.perf_counter()
        finally:
            self.slots.release()

    # ---------------------------------------------------------------- completion
    def poll(self) -> None:
        """Mark the leading blocks whose shards are all written; re-raise a writer's error."""
        while self.blocks:
            head = self.blocks[0]
            for future in head.writes:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            if not head.complete or not all(f.done() for f in head.writes):
                return
            self.blocks.popleft()
            self.on_block(head.block, {**head.info, "finished": max(f.result() for f in head.writes)})

    def close(self) -> None:
        """Wait for every shard handed over, mark the blocks they complete, stop the workers."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.blocks = deque(b for b in self.blocks if b.complete)  # an unfinished block gets no marker
        self.poll()
