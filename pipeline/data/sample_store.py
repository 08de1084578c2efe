"""The generated sample on disk: a shower store written block by block by any number of ranks.

    SAMPLE.zarr/                   the project's store format (pipeline.data.shower_store): showers,
                                   incident_energies, attrs["generation"] = plan; nothing else, so zarr
                                   opens it without warnings
    SAMPLE.zarr.blocks/            beside it: block_NNNNNNN.json, one marker per finished block (rows,
                                   seconds, rank, host, device); finalize.lock; REQUEUE after a stop
    SAMPLE.zarr.manifest.json      written last, after every block was checked: the sample is complete

A block is ``block_size`` consecutive shower indices (a whole number of shards), so ranks never write
into the same shard file. Rank ``r`` of ``W`` owns the blocks ``b`` with ``b % W == r``; a re-run skips
blocks with a marker, so after any interruption the finished sample holds each index exactly once.
The plan (N, seed, model, steps, energies, layout) is fixed when the store is created; opening it with
a different plan is an error rather than a silent mix of two samples. Exactly one process finalises:
whichever rank or array job takes ``finalize.lock`` (:mod:`pipeline.runtime.lock_file`); it removes only
temporaries older than its lock (left by writers killed mid-write), never another process's work.
Samples written before the markers moved out (``blocks/`` and ``manifest.json`` inside the store) are
migrated when opened.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import StoreLayout
from pipeline.data.run_layout import REQUEUE_FILE, sample_blocks_dir, sample_manifest
from pipeline.data.shower_store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ShowerStore,
    StoreError,
    create_arrays,
    read_attrs,
)
from pipeline.physics.geometry import Geometry
from pipeline.runtime.files import atomic_write_json, utc_now
from pipeline.runtime.lock_file import LockFile

LEGACY_BLOCKS, LEGACY_MANIFEST = "blocks", "manifest.json"  # inside the store, before they moved beside it


def check_generation_complete(path: str | Path) -> None:
    """Refuse a generated sample (attrs hold ``generation``) that pipeline.generate has not finished:
    it marks the store complete, then writes the manifest last. Other stores and files pass."""
    attrs = read_attrs(path)
    if attrs is not None and "generation" in attrs and (
            attrs.get("complete") is not True or not sample_manifest(path).is_file()):
        raise StoreError(f"{path}: generated sample is incomplete (generation interrupted or still running); "
                         "re-run the same pipeline.generate command to finish it")


def block_rows(block: int, block_size: int, n: int) -> tuple[int, int]:
    return block * block_size, min((block + 1) * block_size, n)


class SampleStore:
    """Open (creating it if needed) the sample at ``path`` for ``plan``; see the module doc."""

    def __init__(self, path: str | Path, plan: dict[str, Any], geometry: Geometry, layout: StoreLayout) -> None:
        self.path, self.plan = Path(path), plan
        self.blocks_dir, self.manifest_path = sample_blocks_dir(self.path), sample_manifest(self.path)
        self.n, self.block_size = int(plan["n"]), int(plan["block_size"])
        self.n_blocks = -(-self.n // self.block_size)
        if not self.path.exists():
            self._create(geometry, layout)
        self._check_plan()
        self._migrate()
        self.blocks_dir.mkdir(exist_ok=True)
        self.store = ShowerStore(self.path, require_complete=False, writable=True)

    def _migrate(self) -> None:
        """Move markers and manifest of an older sample out of the store (any rank; the first rename wins)."""
        for inside, beside in ((self.path / LEGACY_BLOCKS, self.blocks_dir),
                               (self.path / LEGACY_MANIFEST, self.manifest_path)):
            if inside.exists() and not beside.exists():
                try:
                    os.rename(inside, beside)
                except FileNotFoundError:
                    pass

    def _create(self, geometry: Geometry, layout: StoreLayout) -> None:
        """Create the empty store in a private directory and rename it into place (first rank wins)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.creating")
        attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                 "geometry": {"name": geometry.name, "shape": list(geometry.shape)},
                 "units": {"showers": "MeV", "incident_energies": "MeV"},
                 "layout": {"chunk_rows": layout.chunk_rows, "shard_rows": layout.shard_rows, "codec": layout.codec,
                            "level": layout.level},
                 "split": {"validation_chunks": []}, "generation": self.plan, "created": utc_now()}
        create_arrays(tmp, geometry, self.n, layout, attrs)
        try:
            os.rename(tmp, self.path)
        except OSError:  # another rank created it first
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.path.exists():
                raise

    def _check_plan(self) -> None:
        attrs = read_attrs(self.path)
        if attrs is None or "generation" not in attrs:
            raise StoreError(f"{self.path}: exists but is not a generated sample (no zarr.json with a generation plan); "
                             f"choose another generate.out or remove it")
        old = attrs["generation"]
        diff = [k for k in sorted(set(old) | set(self.plan)) if old.get(k) != self.plan.get(k)]
        if diff:
            k = diff[0]
            raise StoreError(f"{self.path}: was started with another plan ({k}: {old.get(k)!r}, now {self.plan.get(k)!r}); "
                             f"finish it with the same settings, or choose another generate.out")

    # ---------------------------------------------------------------- blocks
    def marker(self, block: int) -> Path:
        return self.blocks_dir / f"block_{block:07d}.json"

    def is_done(self, block: int) -> bool:
        return self.marker(block).is_file()

    def blocks_of(self, rank: int, world_size: int) -> list[int]:
        """This rank's blocks that are not done yet."""
        return [b for b in range(rank, self.n_blocks, world_size) if not self.is_done(b)]

    def rows(self, block: int) -> tuple[int, int]:
        return block_rows(block, self.block_size, self.n)

    def write(self, start: int, showers: np.ndarray, energies: np.ndarray) -> None:
        """Rows ``[start, start + len(showers))``: whole shards, or the last, partial one."""
        stop = start + len(showers)
        self.store.showers[start:stop] = showers
        self.store.energies_array[start:stop] = energies

    def mark_done(self, block: int, info: dict[str, Any]) -> None:
        start, stop = self.rows(block)
        atomic_write_json(self.marker(block), {"block": block, "rows": [start, stop], "finished_at": utc_now(), **info})

    def missing(self) -> list[int]:
        return [b for b in range(self.n_blocks) if not self.is_done(b)]

    def mark_stopped(self, reason: str, rank: int) -> None:
        """Leave ``REQUEUE`` beside the store: this rank stopped early and a re-run resumes (pipeline.launch status)."""
        atomic_write_json(self.blocks_dir / REQUEUE_FILE, {"reason": reason, "rank": rank, "time": utc_now()})

    # -------------------------------------------------------------- finalize
    def complete(self) -> bool:
        return self.manifest_path.is_file()

    def finalize(self, extra: dict[str, Any]) -> dict[str, Any] | None:
        """Check every block, mark the store complete and write the manifest (last); raises if blocks are
        missing. Only the process that takes ``finalize.lock`` does it: the others get None."""
        with LockFile(self.blocks_dir / "finalize.lock") as ours:
            if not ours:
                return None
            if self.complete():  # finished by the previous holder
                return json.loads(self.manifest_path.read_text())
            return self._finalize(extra)

    def _finalize(self, extra: dict[str, Any]) -> dict[str, Any]:
        started_finalising = time.time()
        missing = self.missing()
        if missing:
            raise StoreError(f"{self.path}: {len(missing)} of {self.n_blocks} blocks are not finished (first: "
                             f"{missing[:5]}); re-run pipeline.generate with the same settings")
        markers = [json.loads(self.marker(b).read_text()) for b in range(self.n_blocks)]
        for b, m in enumerate(markers):
            if list(m["rows"]) != list(self.rows(b)):
                raise StoreError(f"{self.marker(b)}: rows {m['rows']} do not match the plan's {list(self.rows(b))}")
        energies = self.store.energies_array[:]
        unwritten = np.flatnonzero(~(energies > 0))
        if unwritten.size:
            raise StoreError(f"{self.path}: incident energies of showers {unwritten[:5].tolist()}... were never written "
                             f"although their blocks are marked done; remove their markers and re-run")
        for partial in self.path.rglob("*.partial"):  # temporaries of writers killed mid-write, never ours
            try:
                if partial.stat().st_mtime < started_finalising:
                    partial.unlink()
            except FileNotFoundError:
                pass
        seconds = sum(m["seconds"] for m in markers)
        started, finished = min(m["started_at"] for m in markers), max(m["finished_at"] for m in markers)
        manifest = {"format": "calo-generated-sample", "format_version": 1, "path": str(self.path.resolve()),
                    **self.plan, "n_blocks": self.n_blocks,
                    "timing": {"started_at": started, "finished_at": finished, "rank_seconds": seconds,
                               "showers_per_rank_second": self.n / seconds if seconds else None,
                               "ms_per_shower_per_rank": 1e3 * seconds / self.n,
                               "devices": sorted({m["device"] for m in markers}),
                               "ranks": sorted({m["rank"] for m in markers})},
                    "peak_rss_mb_per_rank": {
                        str(r): max(m.get("peak_rss_mb", 0.0) for m in markers if m["rank"] == r)
                        for r in sorted({m["rank"] for m in markers})},
                    **extra, "written_at": utc_now()}
        self.store.group.attrs.update({"complete": True, "energy_range_mev": [float(energies.min()),
                                                                             float(energies.max())]})
        atomic_write_json(self.manifest_path, manifest)
        (self.blocks_dir / REQUEUE_FILE).unlink(missing_ok=True)
        return manifest
