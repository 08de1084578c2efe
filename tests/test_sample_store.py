"""The generated-sample store on a shared filesystem: exactly one finaliser, whatever the timing; it removes
only stale temporaries; the markers live beside the zarr store (no zarr warnings); the lock survives a
crashed holder; older samples are migrated."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import zarr

from pipeline.config import StoreLayout
from pipeline.data.run_layout import sample_blocks_dir, sample_manifest
from pipeline.data.sample_store import SampleStore
from pipeline.physics.geometry import load_geometry
from pipeline.runtime.lock_file import LockFile

PLAN = {"n": 48, "seed": 1, "block_size": 16, "geometry": "ds2"}
LAYOUT = StoreLayout(8, 16)


def open_sample(path: Path) -> SampleStore:
    return SampleStore(path, dict(PLAN), load_geometry("ds2"), LAYOUT)


def fill(sample: SampleStore) -> None:
    """Write and mark every block, as the generating ranks would."""
    shape = load_geometry("ds2").shape
    for block in range(sample.n_blocks):
        start, stop = sample.rows(block)
        sample.write(start, np.ones((stop - start, *shape), np.float32), np.full(stop - start, 1e4))
        sample.mark_done(block, {"seconds": 0.1, "started_at": "t0", "rank": block % 2, "device": "cpu"})


def finalise_at_once(path: str, barrier, results) -> None:
    sample = open_sample(Path(path))
    barrier.wait()
    try:
        manifest = sample.finalize({"by": os.getpid()})
        results.put(("ok", None if manifest is None else manifest["by"]))
    except Exception as err:  # reported to the test, which fails on it
        results.put(("error", repr(err)))


def test_two_finalisers_at_the_same_moment_never_collide(tmp_path):
    """Twenty rounds of two processes finalising the same finished sample at once: no error, one manifest,
    the zarr metadata intact, stale temporaries removed and a temporary younger than the finaliser kept."""
    ctx = mp.get_context("fork")
    for round_ in range(20):
        path = tmp_path / f"s{round_}.zarr"
        fill(open_sample(path))
        stale = path / "showers" / "zarr.0123abcd.partial"  # a writer killed mid-write, long ago
        stale.write_bytes(b"x")
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=finalise_at_once, args=(str(path), barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert [o for o in outcomes if o[0] == "error"] == [], outcomes
        writers = {by for _, by in outcomes if by is not None}
        manifest = json.loads(sample_manifest(path).read_text())
        assert manifest["by"] in writers and manifest["n"] == PLAN["n"]
        assert zarr.open_group(str(path), mode="r").attrs["complete"] is True
        assert not stale.exists() and not list(path.rglob("*.partial"))
        assert not (sample_blocks_dir(path) / "finalize.lock").exists()


def test_a_second_finaliser_leaves_the_first_alone(tmp_path):
    """While one process finalises (holds the lock, its zarr.json temporary in flight), another rank that
    also sees every block done neither finalises nor deletes that temporary."""
    sample = open_sample(tmp_path / "s.zarr")
    fill(sample)
    in_flight = sample.path / "zarr.d3adb33f.partial"
    with LockFile(sample_blocks_dir(sample.path) / "finalize.lock") as ours:
        assert ours
        in_flight.write_bytes(b"{}")
        assert open_sample(sample.path).finalize({}) is None
        assert in_flight.exists() and not sample.complete()
    in_flight.unlink()
    assert open_sample(sample.path).finalize({})["n"] == PLAN["n"]


def test_the_finaliser_keeps_temporaries_younger_than_its_lock(tmp_path):
    sample = open_sample(tmp_path / "s.zarr")
    fill(sample)
    young = sample.path / "showers" / "zarr.fresh.partial"
    young.write_bytes(b"x")
    os.utime(young, (time.time() + 60, time.time() + 60))  # written after the finaliser started
    assert sample.finalize({})["n"] == PLAN["n"]
    assert young.exists()


def test_markers_live_beside_the_store_so_zarr_opens_it_without_warnings(tmp_path):
    sample = open_sample(tmp_path / "s.zarr")
    fill(sample)
    sample.mark_stopped("signal SIGUSR1", rank=1)
    assert (sample_blocks_dir(sample.path) / "REQUEUE").is_file()
    sample.finalize({})
    assert not (sample_blocks_dir(sample.path) / "REQUEUE").exists()
    assert sorted(p.name for p in sample.path.iterdir()) == ["incident_energies", "showers", "zarr.json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(str(sample.path), mode="r")
        assert sorted(name for name, _ in group.members()) == ["incident_energies", "showers"]


def test_a_sample_with_markers_inside_is_migrated(tmp_path):
    sample = open_sample(tmp_path / "old.zarr")
    fill(sample)
    sample.finalize({"old": True})
    os.rename(sample_blocks_dir(sample.path), sample.path / "blocks")  # the layout before the markers moved
    os.rename(sample_manifest(sample.path), sample.path / "manifest.json")
    again = open_sample(sample.path)
    assert again.complete() and again.missing() == [] and json.loads(again.manifest_path.read_text())["old"]
    assert not (sample.path / "blocks").exists() and not (sample.path / "manifest.json").exists()


def test_lock_file_one_holder_and_takeover_of_a_dead_one(tmp_path):
    path = tmp_path / "x.lock"
    first, second = LockFile(path), LockFile(path)
    assert first.acquire() and not second.acquire()  # a live holder keeps it
    first.release()
    assert second.acquire()
    second.release()
    # a holder on this host that died: taken over at once
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345, "token": "dead", "time": time.time()}))
    assert LockFile(path).acquire()
    # a holder on another host: taken over only once older than stale_seconds
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "far", "time": time.time()}))
    assert not LockFile(path, stale_seconds=600).acquire()
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "far", "time": time.time() - 601}))
    taker = LockFile(path, stale_seconds=600)
    assert taker.acquire() and taker.holder()["token"] == taker.me["token"]


def grab_lock(path: Path, barrier, results) -> None:
    lock = LockFile(path)
    barrier.wait()
    results.put(lock.acquire())


def test_lock_file_is_exclusive_under_contention(tmp_path):
    ctx = mp.get_context("fork")
    for r in range(30):
        path = tmp_path / f"l{r}.lock"
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=grab_lock, args=(path, barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        got = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert sum(got) == 1, got
