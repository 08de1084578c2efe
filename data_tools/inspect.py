"""Summarise a CaloChallenge HDF5 file, a zarr store or a multi-file export; verify a sample or an
export.

    python -m data_tools.inspect FILE.hdf5 | STORE.zarr | EXPORT.files.json [--sample 2000] [--json]
    python -m data_tools.inspect SAMPLE.zarr | EXPORT.files.json | FILE.hdf5 --verify

Prints N, geometry, energy range, sparsity, size on disk and (for stores) completeness. ``--verify``
(:mod:`data_tools.verify`) checks that a generated sample or an export holds every shower index
exactly once (exit 1 and the problems when not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from data_tools.export_file import ExportError
from data_tools.export_files import read_index
from pipeline.data import run_layout
from pipeline.data.calochallenge_hdf5 import SHOWER_KEY, InputError, inspect_file, read_energies
from pipeline.data.shower_store import ShowerStore, StoreError, chunk_bounds
from pipeline.physics.geometry import GEOMETRY_FILES, load_geometry
from pipeline.runtime.exit_codes import EXIT_CONFIG


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _energy_summary(e: np.ndarray) -> dict[str, float]:
    return {"min_mev": float(e.min()), "max_mev": float(e.max()), "median_mev": float(np.median(e))}


def summarize_hdf5(path: Path, sample: int) -> dict[str, Any]:
    info = inspect_file(path)
    geometry = next((g for g in GEOMETRY_FILES if load_geometry(g).n_voxels == info.n_voxels), None)
    e = read_energies(path)
    k = min(sample, info.n)
    with h5py.File(path, "r") as f:
        showers = f[SHOWER_KEY][:k]
    e_tot = showers.sum(axis=1) / e[:k]
    return {
        "kind": "CaloChallenge HDF5", "path": str(path), "n": info.n, "voxels": info.n_voxels, "dtype": info.dtype,
        "geometry": geometry, "incident_energy": _energy_summary(e),
        "zero_fraction": float((showers == 0).mean()), "etot_over_einc_mean": float(e_tot.mean()),
        "sampled_showers": k, "size_bytes": disk_bytes(path),
    }


def summarize_store(path: Path, sample: int) -> dict[str, Any]:
    store = ShowerStore(path, require_complete=False)
    out: dict[str, Any] = {"kind": "zarr shower store", **store.summary(), "size_bytes": disk_bytes(path)}
    out["raw_float32_bytes"] = store.n * store.geometry.n_voxels * 4
    out["compression_ratio"] = round(out["raw_float32_bytes"] / max(out["size_bytes"], 1), 2)
    if "stats" not in store.attrs:  # a generated sample: no training split, no statistics
        return {**out, **_generated_sample(path, store), **_sampled_zeros(store, sample)}
    out["sources"] = [{k: s[k] for k in ("name", "n", "sha256")} for s in store.attrs.get("sources", [])]
    out["chunks"] = {"train": len(store.chunk_ids("train")), "validation": len(store.chunk_ids("validation"))}
    if store.complete:
        stats = store.stats
        lo, hi = stats["log_energy"]["min"], stats["log_energy"]["max"]
        out["incident_energy_train"] = {"min_mev": float(np.exp(lo)), "max_mev": float(np.exp(hi))}
        out["zero_fraction_train"] = float(np.mean(stats["zero_fraction"]["mean"]))
        out["etot_over_einc_mean_train"] = stats["total_fraction"]["mean"]
    else:
        done = len(list((path / "_conversion").glob("shard_*.json")))
        out["shards_done"] = f"{done}/{len(chunk_bounds(store.n, store.shard_rows))}"
    return {**out, **_sampled_zeros(store, sample)}


def _sampled_zeros(store: ShowerStore, sample: int) -> dict[str, Any]:
    k = min(sample, store.n)
    return {"zero_fraction_sampled": float((store.showers[:k] == 0).mean()), "sampled_showers": k}


def _generated_sample(path: Path, store: ShowerStore) -> dict[str, Any]:
    """What a ``pipeline.generate`` sample records: its energy range once complete, its manifest's
    timing, or how many of its blocks are done."""
    out: dict[str, Any] = {"kind": "generated sample (zarr)"}
    if store.complete and "energy_range_mev" in store.attrs:
        lo, hi = store.attrs["energy_range_mev"]
        out["incident_energy"] = {"min_mev": lo, "max_mev": hi}
    manifest = run_layout.sample_manifest(path)
    if manifest.is_file():
        timing = json.loads(manifest.read_text()).get("timing", {})
        out["ms_per_shower_per_rank"] = timing.get("ms_per_shower_per_rank")
    else:
        done = len(list(run_layout.sample_blocks_dir(path).glob("block_*.json")))
        out["blocks_done"] = done
    return out


#: what the summary of a multi-file export shows of its first file
FILE_KEYS = ("path", "n", "zero_fraction", "etot_over_einc_mean")


def summarize_index(path: Path, sample: int) -> dict[str, Any]:
    """A multi-file export: its index, and the first file's summary."""
    index = read_index(path)
    files = [path.with_name(f["name"]) for f in index["files"]]
    size = sum(f.stat().st_size for f in files if f.is_file())
    present = [f for f in files if f.is_file()]
    first = summarize_hdf5(present[0], sample) if present else {}
    return {"kind": "CaloChallenge HDF5 files", "path": str(path), "n": index["n"],
            "files": len(files), "rows_per_file": index["rows_per_file"], "dtype": index["dtype"],
            "geometry": index["geometry"],
            "sample": index["sample"], "missing_files": [f.name for f in files if not f.is_file()],
            "size_bytes": size, "bytes_per_shower": round(size / max(index["n"], 1), 1),
            "first_present_file": {k: first[k] for k in FILE_KEYS if k in first}}


def summarize(path: str | Path, sample: int = 1000) -> dict[str, Any]:
    path = Path(path)
    if path.name.endswith(".files.json"):
        return summarize_index(path, sample)
    if (path / "zarr.json").is_file():
        return summarize_store(path, sample)
    if path.is_file():
        return summarize_hdf5(path, sample)
    raise InputError(f"{path}: neither an HDF5 file nor a zarr store")


def _format(summary: dict[str, Any], indent: str = "") -> str:
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(_format(value, indent + "  "))
        elif key.endswith("bytes") and isinstance(value, int):
            lines.append(f"{indent}{key}: {value} ({value / 2**20:.1f} MiB)")
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="CaloChallenge HDF5 file or zarr store")
    p.add_argument("--sample", type=int, default=1000, help="showers read to estimate sparsity")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--verify", action="store_true",
                   help="check that a generated sample or an export holds every shower "
                        "index exactly once")
    p.add_argument("--energies-from",
                   help="with --verify: the reference file a sample took its energies from")
    p.add_argument("--no-compare", action="store_true",
                   help="with --verify of an export: check files and attrs only, not every row "
                        "against the sample")
    args = p.parse_args(argv)
    try:
        summary = verify(args) if args.verify else summarize(args.path, args.sample)
    except (InputError, StoreError, ExportError, OSError) as err:
        print(f"inspect: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(summary, indent=2) if args.json else _format(summary))
    return 0 if summary.get("ok", True) else 1


def verify(args: argparse.Namespace) -> dict[str, Any]:
    from data_tools.verify import verify_export, verify_sample

    if (args.path / "zarr.json").is_file():
        return verify_sample(args.path, args.energies_from)
    return verify_export(args.path, compare=not args.no_compare)


if __name__ == "__main__":
    sys.exit(main())
