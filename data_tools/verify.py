"""Check that a generated sample, or its export, holds every shower index exactly once (``inspect
--verify``).

    python -m data_tools.inspect SAMPLE.zarr --verify [--energies-from REF.hdf5]
    python -m data_tools.inspect DIR/1M.files.json --verify      # or one exported FILE.hdf5

A generated sample (:mod:`pipeline.data.sample_store`): one block marker for each planned block and
no other, each with its planned rows; every incident energy equal to the one its index's seed gives
(:class:`pipeline.generation.energies.IncidentEnergies`: a block written at the wrong rows, twice,
or never, shows here); every shower finite and non-negative; no two blocks with the same bytes; the
manifest present. An export (an index or one file written by :mod:`data_tools.export`): the files
cover rows ``0..N`` once, in order, each a CaloChallenge file (keys, shapes, dtype, attrs naming its
rows of the sample), and, while the sample is there, every row equal to the sample's. Everything is
streamed one block at a time, so memory does not grow with N.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from data_tools.export_file import existing_export, sample_fingerprint
from data_tools.export_files import read_index
from pipeline.data.calochallenge_hdf5 import ENERGY_KEY, SHOWER_KEY
from pipeline.data.run_layout import sample_blocks_dir, sample_manifest
from pipeline.data.sample_store import block_rows
from pipeline.data.shower_store import ShowerStore, StoreError, read_attrs
from pipeline.generation.energies import IncidentEnergies

#: rows read at a time when comparing an export with its sample
COMPARE_ROWS = 1024
#: problems listed in full; the rest are counted
MAX_LISTED = 20


class Problems:
    """What a verification found: the first MAX_LISTED messages and the total count."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.items) < MAX_LISTED:
            self.items.append(message)

    def result(self, **facts: Any) -> dict[str, Any]:
        return {
            "ok": self.count == 0,
            "problems": self.count,
            "first_problems": self.items,
            **facts,
        }


def _marker_blocks(blocks_dir: Path) -> tuple[dict[int, Path], list[str]]:
    """Block number -> marker file, from one directory listing; names that are not markers."""
    found, other = {}, []
    for entry in blocks_dir.iterdir() if blocks_dir.is_dir() else ():
        name = entry.name
        if name.startswith("block_") and name.endswith(".json") and name[6:-5].isdigit():
            found[int(name[6:-5])] = entry
        elif name.endswith(".json.tmp") or ".partial" in name:
            other.append(name)
    return found, other


def _check_markers(path: Path, plan: dict[str, Any], problems: Problems) -> int:
    n, block_size = int(plan["n"]), int(plan["block_size"])
    n_blocks = -(-n // block_size)
    markers, leftovers = _marker_blocks(sample_blocks_dir(path))
    for name in leftovers:
        problems.add(f"{sample_blocks_dir(path) / name}: a temporary file was left behind")
    for b in sorted(set(range(n_blocks)) - set(markers)):
        problems.add(
            f"block {b} (rows {list(block_rows(b, block_size, n))}): no marker (never finished)"
        )
    for b in sorted(set(markers) - set(range(n_blocks))):
        problems.add(f"{markers[b]}: block {b} is not in the plan ({n_blocks} blocks)")
    for b in sorted(set(markers) & set(range(n_blocks))):
        try:
            rows = json.loads(markers[b].read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.add(f"{markers[b]}: unreadable marker ({err})")
            continue
        if list(rows) != list(block_rows(b, block_size, n)):
            problems.add(
                f"{markers[b]}: rows {rows}, the plan's are {list(block_rows(b, block_size, n))}"
            )
    return n_blocks


def verify_sample(path: str | Path, energies_from: str | None = None) -> dict[str, Any]:
    """Verify a generated zarr sample (see the module doc); returns a report with ``ok`` and the
    problems."""
    path = Path(path)
    attrs = read_attrs(path)
    if attrs is None or "generation" not in attrs:
        raise StoreError(f"{path}: not a generated sample (no zarr.json with a generation plan); "
                         "--verify checks samples written by pipeline.generate and exports written "
                         "by data_tools.export")
    plan, problems = attrs["generation"], Problems()
    if not sample_manifest(path).is_file():
        problems.add(f"{sample_manifest(path)}: missing (the sample was never finalised)")
    n_blocks = _check_markers(path, plan, problems)
    energies, energies_checked = _expected_energies(plan, energies_from)
    store = ShowerStore(path, require_complete=False)
    digests: dict[str, int] = {}
    for b in range(n_blocks):
        a, z = block_rows(b, int(plan["block_size"]), int(plan["n"]))
        e = np.asarray(store.energies_array[a:z], dtype=np.float64)
        want = energies(a, z) if energies is not None else None
        if want is not None and not np.array_equal(e, want):
            bad = np.flatnonzero(e != want)
            problems.add(f"block {b}: {bad.size} incident energies differ from the seed's (first "
                         f"row {a + bad[0]}): rows written by another block, or never")
        elif want is None and not (e > 0).all():
            problems.add(f"block {b}: {int((~(e > 0)).sum())} incident energies are not positive "
                         "(never written)")
        digest = _check_showers(store, b, a, z, problems)
        if digest in digests:
            problems.add(f"block {b} holds the same showers as block {digests[digest]}")
        digests.setdefault(digest, b)
    return problems.result(
        kind="generated sample",
        path=str(path),
        n=int(plan["n"]),
        blocks=n_blocks,
        energies_checked=energies_checked,
    )


def _check_showers(store: ShowerStore, block: int, a: int, z: int, problems: Problems) -> str:
    """Flag NaN, inf and negative energies in rows ``[a, z)``, read COMPARE_ROWS at a time; returns
    the sha256 of their bytes."""
    digest, bad = hashlib.sha256(), 0
    for b0, b1 in _blocks(a, z):
        showers = store.showers[b0:b1].reshape(b1 - b0, -1)
        bad += int((~np.isfinite(showers) | (showers < 0)).any(axis=1).sum())
        digest.update(showers.tobytes())
    if bad:
        problems.add(f"block {block}: {bad} showers with NaN, inf or negative energies")
    return digest.hexdigest()


def _expected_energies(
    plan: dict[str, Any], energies_from: str | None
) -> tuple[IncidentEnergies | None, str]:
    """The energies the plan gives each index, and how they are checked."""
    if plan.get("energies") == "log-uniform":
        return IncidentEnergies(
            int(plan["seed"]), plan["energy_range_mev"], None
        ), "re-derived from the seed"
    if energies_from is None:
        return (
            None,
            "positive only (the sample copies a reference's energies: pass --energies-from to "
            "compare)",
        )
    expected = IncidentEnergies(int(plan["seed"]), (1.0, 1.0), energies_from)
    if len(expected.reference) != plan.get("energies_n"):  # type: ignore[arg-type]
        raise StoreError(f"{energies_from}: has {len(expected.reference)} showers, the sample was "
                         f"generated from {plan.get('energies_n')} reference energies")
    return expected, f"equal to {energies_from}"


def export_files_of(path: Path) -> tuple[dict[str, Any], list[tuple[Path, int, int]]]:
    """(index facts, [(file, start, stop)]) of an export index or of one exported file."""
    if path.suffix == ".json":
        index = read_index(path)
        return index, [
            (path.with_name(f["name"]), int(f["start"]), int(f["stop"])) for f in index["files"]
        ]
    attrs = existing_export(path)
    if attrs is None:
        raise StoreError(
            f"{path}: not written by data_tools.export (no exporter attrs); --verify checks exports"
        )
    return attrs, [(path, int(attrs["start"]), int(attrs["stop"]))]


def _blocks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, COMPARE_ROWS):
        yield a, min(a + COMPARE_ROWS, stop)


def verify_export(path: str | Path, compare: bool = True) -> dict[str, Any]:
    """Verify an export index or exported file (see the module doc)."""
    path = Path(path)
    facts, files = export_files_of(path)
    problems = Problems()
    sample_path = Path(facts["sample"])
    store = (
        ShowerStore(sample_path, require_complete=False)
        if compare and sample_path.exists()
        else None
    )
    if store is not None and sample_fingerprint(store) != facts.get("sample_fingerprint"):
        problems.add(
            f"{sample_path}: changed since the export (its attrs differ): regenerated or "
            "reconverted"
        )
        store = None
    # an index covers rows 0..n; one file (perhaps a --start/--stop part) covers its own rows
    expected_start = 0 if path.suffix == ".json" else files[0][1]
    n = facts.get("n", facts.get("stop"))
    for file, a, z in sorted(files, key=lambda f: f[1]):
        if a != expected_start:
            problems.add(
                f"{file.name}: starts at row {a}, expected {expected_start} (rows missing or twice)"
            )
        expected_start = max(expected_start, z)
        _verify_file(file, a, z, facts, store, problems)
    if path.suffix == ".json" and expected_start != n:
        problems.add(f"{path}: the files end at row {expected_start}, the sample has {n}")
    return problems.result(
        kind="export",
        path=str(path),
        n=sum(z - a for _, a, z in files),
        files=len(files),
        compared_with=str(sample_path) if store is not None else None,
        bytes=sum(f.stat().st_size for f, _, _ in files if f.is_file()),
    )


def _verify_file(
    file: Path, a: int, z: int, facts: dict[str, Any], store: ShowerStore | None, problems: Problems
) -> None:
    if not file.is_file():
        problems.add(f"{file}: missing")
        return
    attrs = existing_export(file) or {}
    if (attrs.get("start"), attrs.get("stop"), attrs.get("sample_fingerprint")) != (
        a,
        z,
        facts.get("sample_fingerprint"),
    ):
        problems.add(
            f"{file}: its attrs say rows {attrs.get('start')}-{attrs.get('stop')} of another "
            "sample or "
            f"range, expected rows {a}-{z} of {facts.get('sample')}"
        )
        return
    with h5py.File(file, "r") as f:
        e, s = f[ENERGY_KEY], f[SHOWER_KEY]
        if (
            e.shape != (z - a, 1)
            or s.shape[0] != z - a
            or str(s.dtype) != facts.get("dtype", str(s.dtype))
        ):
            problems.add(
                f"{file}: {ENERGY_KEY} {e.shape}, {SHOWER_KEY} {s.shape} {s.dtype}; expected "
                f"({z - a}, 1) and ({z - a}, V) {facts.get('dtype')}"
            )
            return
        if store is None:
            return
        for b0, b1 in _blocks(a, z):
            want_s = store.showers[b0:b1].reshape(b1 - b0, -1).astype(s.dtype)
            want_e = np.asarray(store.energies_array[b0:b1]).astype(e.dtype)
            if not (
                np.array_equal(e[b0 - a : b1 - a, 0], want_e)
                and np.array_equal(s[b0 - a : b1 - a], want_s)
            ):
                problems.add(f"{file}: rows {b0}-{b1} differ from the sample's")
