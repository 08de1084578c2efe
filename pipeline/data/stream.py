"""Rank-sharded, shuffled, prefetched, exactly resumable stream of showers from a zarr store.

Each epoch the split's chunks are permuted with ``(seed, epoch)`` and dealt round-robin to the
ranks, so every rank reads a disjoint set of whole chunks. A rank's chunks are read by a small pool
of background threads (decompression overlaps compute) and mixed in a shuffle buffer of
``shuffle_chunks`` chunks, permuted with ``(seed, epoch, rank, window)``. The rows of an epoch
therefore form a fixed sequence, and the stream's position is just ``(epoch, batch)``: resuming
from a saved state reproduces the uninterrupted stream exactly. Every rank yields the same number
of batches per epoch, so no rank waits at a collective for a batch that never comes.

``resident=True`` instead loads the rank's share of the split into (GPU) memory once and permutes
rows in place each epoch; for datasets that fit.

``view="layers"`` yields each shower's layer energies ``(B, L)`` (summed in float64 as chunks are read) under
the key ``layer_energies`` instead of the showers: what a run training the layer-energy network alone needs.
100k ds3 showers are then 18 MB, so such a stream is best resident.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Literal, TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset

from pipeline.data.shower_store import ShowerStore

Batch = dict[str, torch.Tensor]
T = TypeVar("T")


class StreamError(ValueError):
    """Stream settings that cannot work with this store (too few showers, mismatched resume state)."""


class ShowerStream(IterableDataset):
    """Iterate ``{"showers": (B, *shape) float32, "energies": (B,) float64 MeV, "index": (B,) int64}`` (with
    ``view="layers"``: ``"layer_energies"`` (B, L) float32 instead of ``"showers"``).

    ``batch_size`` is per rank. Iteration continues from the current state through ``epochs``
    epochs in total (forever when None); ``state_dict``/``load_state_dict`` save and restore the
    position after the last batch handed out.
    """

    def __init__(
        self,
        store: str | Path | ShowerStore,
        batch_size: int,
        *,
        split: Literal["train", "validation", "all"] = "train",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_chunks: int = 16,
        num_workers: int = 2,
        prefetch_chunks: int = 8,
        resident: bool = False,
        device: str | torch.device = "cpu",
        epochs: int | None = None,
        view: Literal["showers", "layers"] = "showers",
    ) -> None:
        self.store = store if isinstance(store, ShowerStore) else ShowerStore(store)
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise StreamError(f"bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.batch_size, self.split, self.rank, self.world_size = batch_size, split, rank, world_size
        self.seed, self.shuffle, self.resident, self.epochs = seed, shuffle, resident, epochs
        if view not in ("showers", "layers"):
            raise StreamError(f"view: expected showers or layers, got {view!r}")
        self.view, self.key = view, "showers" if view == "showers" else "layer_energies"
        self.shuffle_chunks = max(1, shuffle_chunks)
        self.num_workers, self.prefetch_chunks = max(1, num_workers), max(1, prefetch_chunks)
        self.device = torch.device(device)
        self.chunks = self.store.chunk_ids(split)
        self.chunks_per_rank = len(self.chunks) // world_size
        self.batches_per_epoch = self._count_batches()
        self.epoch, self.batch = 0, 0
        self._resident: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ----------------------------------------------------------------- plan
    def _chunk_rows(self, chunk: int) -> int:
        start, stop = self.store.chunk_range(chunk)
        return stop - start

    def _count_batches(self) -> int:
        """Batches every rank can fill in any epoch (the store's short last chunk may land anywhere)."""
        full = self.store.chunk_rows
        shortfall = max((full - self._chunk_rows(c) for c in self.chunks), default=0)
        rows = self.chunks_per_rank * full - shortfall
        n = rows // self.batch_size
        if n < 1:
            raise StreamError(
                f"{self.store.path}: split {self.split!r} has {len(self.chunks)} chunks of {full} showers; "
                f"{self.world_size} rank(s) x batch {self.batch_size} per rank needs at least "
                f"{self.world_size * (-(-self.batch_size // full))} chunks"
            )
        return n

    def epoch_chunks(self, epoch: int) -> list[int]:
        """This rank's chunks in reading order for ``epoch`` (static in resident mode)."""
        order = np.asarray(self.chunks)
        if self.shuffle:
            key = [self.seed, 0 if self.resident else epoch, 0x5EED]
            order = order[np.random.default_rng(key).permutation(len(order))]
        mine = order[self.rank :: self.world_size][: self.chunks_per_rank]
        return [int(c) for c in mine]

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "batch_size": self.batch_size,
                "world_size": self.world_size, "rank": self.rank, "split": self.split, "resident": self.resident,
                "view": self.view}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "batch_size", "world_size", "rank", "split", "resident", "view"):
            saved = state.get(key, "showers" if key == "view" else None)  # states from before views: showers
            if saved != getattr(self, key):
                raise StreamError(
                    f"cannot resume the data stream: saved {key}={saved!r} but this run has "
                    f"{getattr(self, key)!r}; resume with the same settings and number of ranks"
                )
        if not 0 <= state["batch"] < self.batches_per_epoch:
            raise StreamError(f"saved batch {state['batch']} is outside this epoch's {self.batches_per_epoch} batches")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    # ------------------------------------------------------------ iteration
    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        if torch.utils.data.get_worker_info() is not None:
            raise StreamError("use ShowerStream directly or with DataLoader(num_workers=0); it has its own reader threads")
        while self.epochs is None or self.epoch < self.epochs:
            source = self._resident_batches if self.resident else self._streamed_batches
            for batch in source(self.epoch, self.batch):
                self.batch += 1
                if self.batch == self.batches_per_epoch:
                    self.epoch, self.batch = self.epoch + 1, 0
                yield batch

    def _streamed_batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        chunks = self.epoch_chunks(epoch)
        windows = [chunks[i : i + self.shuffle_chunks] for i in range(0, len(chunks), self.shuffle_chunks)]
        window_rows = np.cumsum([0] + [sum(self._chunk_rows(c) for c in w) for w in windows])
        skip = start_batch * self.batch_size
        first = int(np.searchsorted(window_rows, skip, side="right") - 1)
        energies = self.store.energies
        pending: list[tuple[np.ndarray, np.ndarray]] = []  # (showers, global index) rows not yet batched
        n_pending, batch_no = 0, start_batch
        shuffled = _in_background(lambda: self._shuffled_windows(epoch, windows, first, skip - int(window_rows[first])))
        for showers, index in shuffled:
            pending.append((showers, index))
            n_pending += len(index)
            while n_pending >= self.batch_size and batch_no < self.batches_per_epoch:
                showers_b, index_b = _take(pending, self.batch_size)
                n_pending -= self.batch_size
                yield self._to_batch(showers_b, index_b, energies)
                batch_no += 1
            if batch_no == self.batches_per_epoch:
                shuffled.close()
                return

    def _shuffled_windows(self, epoch: int, windows: list[list[int]], first: int,
                          skip: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Windows ``first..`` with their rows permuted by (seed, epoch, rank, window); the first ``skip`` rows dropped."""
        for w, (showers, index) in enumerate(self._read_windows(windows[first:]), start=first):
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch, self.rank, w, 0xB0F]).permutation(len(index))
                showers, index = showers[perm], index[perm]
            if skip:
                showers, index, skip = showers[skip:], index[skip:], 0
            yield showers, index

    def _read_windows(self, windows: list[list[int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Concatenated chunks of each window, read ahead by a thread pool in order."""
        order = [c for w in windows for c in w]
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="shower-reader") as pool:
            queue: deque = deque()
            nxt = 0
            for w in windows:
                while nxt < len(order) and len(queue) < max(self.prefetch_chunks, len(w)):
                    queue.append(pool.submit(self._read_chunk, order[nxt]))
                    nxt += 1
                parts = [queue.popleft().result() for _ in w]
                index = np.concatenate([np.arange(*self.store.chunk_range(c)) for c in w])
                while nxt < len(order) and len(queue) < self.prefetch_chunks:
                    queue.append(pool.submit(self._read_chunk, order[nxt]))
                    nxt += 1
                yield np.concatenate(parts), index

    def _read_chunk(self, chunk: int) -> np.ndarray:
        showers = self.store.read_chunk(chunk)
        if self.view == "showers":
            return showers
        return showers.reshape(len(showers), showers.shape[1], -1).sum(axis=2, dtype=np.float64).astype(np.float32)

    def _to_batch(self, showers: np.ndarray, index: np.ndarray, energies: np.ndarray) -> Batch:
        batch = {self.key: torch.from_numpy(showers), "energies": torch.from_numpy(energies[index]),
                 "index": torch.from_numpy(index.astype(np.int64))}
        if self.device.type == "cuda":
            batch = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return batch

    def _resident_batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        if self._resident is None:
            self._resident = self._load_resident()
        showers, energies, index = self._resident
        n = len(index)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch, self.rank, 0xB0F]).permutation(n)
        else:
            perm = np.arange(n)
        perm_t = torch.from_numpy(perm).to(self.device)
        for b in range(start_batch, self.batches_per_epoch):
            sel = perm_t[b * self.batch_size : (b + 1) * self.batch_size]
            yield {self.key: showers[sel], "energies": energies[sel], "index": index[sel]}

    def _load_resident(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chunks = self.epoch_chunks(0)
        showers, index = next(self._read_windows([chunks]))
        energies = self.store.energies[index]
        return (torch.from_numpy(showers).to(self.device), torch.from_numpy(energies).to(self.device),
                torch.from_numpy(index.astype(np.int64)).to(self.device))


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _in_background(make: Callable[[], Iterator[T]], depth: int = 1) -> Generator[T, None, None]:
    """Run the iterator ``make()`` in a thread, ``depth`` items ahead of the consumer.

    Closing the returned generator stops the thread (and closes the iterator) promptly.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        it = make()
        try:
            for item in it:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # handed to the consumer, raised there
            put(_Failure(err))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="shower-windows", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def _take(pending: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pop the first ``n`` rows from a list of (showers, index) pieces, in order (mutates ``pending``)."""
    taken_s, taken_i, need = [], [], n
    while need:
        showers, index = pending[0]
        k = min(need, len(index))
        taken_s.append(showers[:k])
        taken_i.append(index[:k])
        if k == len(index):
            pending.pop(0)
        else:
            pending[0] = (showers[k:], index[k:])
        need -= k
    if len(taken_s) == 1:
        return np.ascontiguousarray(taken_s[0]), taken_i[0]
    return np.concatenate(taken_s), np.concatenate(taken_i)
