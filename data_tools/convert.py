"""Convert CaloChallenge HDF5 files into one sharded, compressed zarr v3 store.

    python -m data_tools.convert IN_1.hdf5 [IN_2.hdf5 ...] --geometry ds3 --out STORE.zarr
    python -m data_tools.convert --config CFG [--set K=V]   # data.inputs -> data.store (data.* settings)
    mpirun -n 8 python -m data_tools.convert ...        # or srun --mpi=pmi2

Streams shard by shard (bounded memory), computes the preprocessing statistics in the same pass,
and is resumable: each finished shard leaves a small marker with its statistics; a re-run of the
same command skips finished shards, and the store is marked complete (attrs written last) only
when every shard is there. With MPI each rank converts disjoint whole shards. With ``--config`` the
config's missing stand-in files are simulated first (the inputs from ``data.standin`` and the evaluation
reference from ``evaluate.reference_standin``, on rank 0): as the chain's first stage, convert prepares
every file the later stages read. Explicit options override the config's values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from data_tools.convert_inputs import InputRows, describe_inputs
from data_tools.standin import prepare_standins
from pipeline.config import ConfigError, StoreLayout, add_config_arguments
from pipeline.data.calochallenge_hdf5 import InputError
from pipeline.data.shower_store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ShowerStore,
    StoreError,
    chunk_bounds,
    create_arrays,
    read_attrs,
    validation_chunks,
)
from pipeline.physics.geometry import GEOMETRY_FILES, Geometry, load_geometry
from pipeline.physics.shower_stats import block_stats, merge_stats, stats_from_dict, stats_to_dict
from pipeline.runtime.exit_codes import EXIT_CONFIG, EXIT_STORAGE
from pipeline.runtime.mpi import world_comm
from pipeline.runtime.signals import catch_from_start, run_main

PROGRESS_DIR = "_conversion"


def make_plan(sources: list[dict], geometry: Geometry, layout: StoreLayout, validation_fraction: float, split_seed: int) -> dict:
    """Everything that determines the store's content; a resumed run must match it exactly."""
    n = sum(s["n"] for s in sources)
    n_chunks = -(-n // layout.chunk_rows)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "geometry": geometry.to_dict(),
        "units": {"showers": "MeV", "incident_energies": "MeV"},
        "n": n,
        "sources": sources,
        "layout": asdict(layout),
        "split": {
            "unit": "chunk",
            "chunk_rows": layout.chunk_rows,
            "validation_fraction": validation_fraction,
            "seed": split_seed,
            "validation_chunks": validation_chunks(n_chunks, validation_fraction, split_seed),
        },
    }


def _same_content(a: dict, b: dict) -> bool:
    """Plans match when everything except the inputs' location matches."""
    def key(plan: dict) -> Any:
        sources = [{k: v for k, v in s.items() if k != "path"} for s in plan.get("sources", [])]
        return json.dumps({**{k: plan.get(k) for k in ("format", "format_version", "geometry", "n", "layout", "split")},
                           "sources": sources}, sort_keys=True)
    return key(a) == key(b)


def prepare_store(out: Path, plan: dict, geometry: Geometry, layout: StoreLayout, energies: np.ndarray, overwrite: bool) -> str:
    """Create, resume or refuse the output store. Returns 'created', 'resumed' or 'complete'."""
    attrs = read_attrs(out)
    if out.exists():
        if attrs is None:
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            else:
                raise StoreError(f"{out}: exists and is not a zarr store; refusing to touch it")
        elif attrs.get("format") == FORMAT_NAME and _same_content(attrs, plan):
            if attrs.get("complete") is True:
                shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
                return "complete"
            _remove_stale_partials(out)
            return "resumed"
        elif not overwrite:
            raise StoreError(
                f"{out}: a store from different inputs or settings exists (sources "
                f"{[s.get('name') for s in attrs.get('sources', [])]}); pass --overwrite to replace it"
            )
        else:
            shutil.rmtree(out)
    # built beside the target and renamed into place: a store killed while being created is never mistaken for
    # a store "from other inputs" (its attrs are written after the arrays)
    for stale in out.parent.glob(f".{out.name}.*.creating"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.creating")
    group = create_arrays(tmp, geometry, plan["n"], layout, plan)
    group["incident_energies"][:] = energies
    (tmp / PROGRESS_DIR).mkdir()
    os.rename(tmp, out)
    return "created"


def _remove_stale_partials(out: Path) -> None:
    """Delete temporary files that a killed writer left (zarr's ``*.<uuid>.partial``, our ``*.tmp``)."""
    for pattern in ("*.partial", f"{PROGRESS_DIR}/*.tmp"):
        for path in out.rglob(pattern) if pattern.startswith("*") else out.glob(pattern):
            path.unlink(missing_ok=True)


def marker_path(out: Path, shard: int) -> Path:
    return out / PROGRESS_DIR / f"shard_{shard:07d}.json"


def convert_shard(out: Path, store: ShowerStore, rows: InputRows, shard: int, start: int, stop: int,
                  train_chunks: set[int], energies: np.ndarray) -> None:
    """Write one whole shard, then its statistics marker (atomically)."""
    block = rows.read(start, stop).reshape(stop - start, *store.geometry.shape)
    store.showers[start:stop] = block
    parts = []
    for a, b in chunk_bounds(stop - start, store.chunk_rows):
        if (start + a) // store.chunk_rows in train_chunks:
            parts.append(block_stats(energies[start + a: start + b], block[a:b], store.geometry))
    marker = {"shard": shard, "rows": [start, stop], "stats": stats_to_dict(merge_stats(parts)) if parts else None}
    tmp = marker_path(out, shard).with_suffix(".tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, marker_path(out, shard))


def finalize(out: Path, n_shards: int) -> None:
    """Merge shard statistics in shard order and mark the store complete (attrs last)."""
    missing = [s for s in range(n_shards) if not marker_path(out, s).is_file()]
    if missing:
        raise StoreError(f"{out}: shards {missing[:5]}... were not written; re-run the same command to finish")
    parts = []
    for s in range(n_shards):
        stats = json.loads(marker_path(out, s).read_text())["stats"]
        if stats is not None:
            parts.append(stats_from_dict(stats))
    if not parts:
        raise StoreError(f"{out}: no training chunks; lower --validation-fraction")
    store = ShowerStore(out, require_complete=False, writable=True)
    store.group.attrs.update({"stats": stats_to_dict(merge_stats(parts)), "complete": True})
    shutil.rmtree(out / PROGRESS_DIR)


def convert(inputs: Sequence[str | Path], out: str | Path, geometry_name: str, *, layout: StoreLayout = StoreLayout(),
            validation_fraction: float = 0.1, split_seed: int = 0, overwrite: bool = False, comm: Any = None,
            progress: bool = True) -> Path:
    """Convert ``inputs`` into the store ``out``; collective over ``comm`` when given."""
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    out = Path(out)
    geometry = load_geometry(geometry_name)
    layout.check("layout")
    if not 0 <= validation_fraction < 1:
        raise ConfigError(f"validation_fraction: must be in [0, 1), got {validation_fraction}")

    def on_root(fn):  # run fn on rank 0 and share its result or its error with every rank
        result, error = None, None
        if rank == 0:
            try:
                result = fn()
            except (InputError, StoreError, ConfigError, OSError) as err:
                error = err
        if comm is not None:
            result, error = comm.bcast((result, error), root=0)
        if error is not None:
            raise error
        return result

    def prepare():
        sources, energies = describe_inputs([Path(p) for p in inputs], geometry)
        plan = make_plan(sources, geometry, layout, validation_fraction, split_seed)
        return plan, prepare_store(out, plan, geometry, layout, energies, overwrite)

    plan, state = on_root(prepare)
    if state == "complete":
        if rank == 0 and progress:
            print(f"convert: {out} is already complete for these inputs; nothing to do")
        return out
    store = ShowerStore(out, require_complete=False, writable=True)
    energies = store.energies
    val = set(plan["split"]["validation_chunks"])
    train_chunks = {c for c in range(store.n_chunks) if c not in val}
    shards = chunk_bounds(store.n, layout.shard_rows)
    mine = [s for s in range(rank, len(shards), size) if not marker_path(out, s).is_file()]
    rows = InputRows(plan["sources"])
    error = None
    try:
        bar = tqdm(mine, desc=f"convert rank {rank}", unit="shard", disable=not progress or rank != 0)
        for s in bar:
            convert_shard(out, store, rows, s, *shards[s], train_chunks, energies)
    except (InputError, OSError) as err:
        error = err
    finally:
        rows.close()
    if comm is not None:
        errors = [e for e in comm.allgather(error) if e is not None]
        error = error or (errors[0] if errors else None)
    if error is not None:
        raise error
    on_root(lambda: finalize(out, len(shards)))
    if rank == 0 and progress:
        print(f"convert: wrote {store.n} showers from {len(inputs)} file(s) to {out} ({state})")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_tools.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", type=Path,
                   help="CaloChallenge HDF5 files (incident_energies, showers); with --config default data.inputs")
    p.add_argument("--geometry", choices=sorted(GEOMETRY_FILES), help="binning of the inputs (with --config: data.geometry)")
    p.add_argument("--out", type=Path, help="output zarr store (directory; with --config: data.store)")
    p.add_argument("--chunk-rows", type=int, help=f"showers per compressed chunk (default {StoreLayout.chunk_rows})")
    p.add_argument("--shard-rows", type=int, help=f"showers per shard file (default {StoreLayout.shard_rows})")
    p.add_argument("--codec", choices=["zstd", "blosc-zstd-shuffle", "blosc-zstd-bitshuffle", "blosc-lz4-bitshuffle", "gzip"],
                   help=f"compression codec (default {StoreLayout.codec})")
    p.add_argument("--level", type=int, help=f"compression level (default {StoreLayout.level})")
    p.add_argument("--validation-fraction", type=float, help="fraction of chunks held out for validation (default 0.1)")
    p.add_argument("--split-seed", type=int, help="seed of the train/validation split (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store made from other inputs")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_config_arguments(p, required=False)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; without ``--config`` the inputs, ``--geometry`` and ``--out`` are required."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is None:
        missing = [name for name, value in (("INPUTS", args.inputs), ("--geometry", args.geometry), ("--out", args.out))
                   if not value]
        if missing:
            parser.error(f"the following arguments are required without --config: {', '.join(missing)}")
        if args.overrides:
            parser.error("--set needs --config")
    return args


def settings_from_args(args: argparse.Namespace, comm: Any = None) -> dict[str, Any]:
    """convert()'s arguments from the command line, filled in from ``--config`` where one is given.

    With ``--config`` and the inputs taken from ``data.inputs``, the config's missing stand-in files are
    simulated first (``data.standin``, ``evaluate.reference_standin``), on rank 0 only; the other ranks
    wait for them.
    """
    cfg = None
    if args.config is not None:
        from pipeline.config import load_config

        cfg = load_config(args.config, args.overrides)
    d = cfg.data if cfg is not None else None
    base = d.layout if d is not None else StoreLayout()
    layout = StoreLayout(*(base_value if value is None else value for value, base_value in (
        (args.chunk_rows, base.chunk_rows), (args.shard_rows, base.shard_rows), (args.codec, base.codec),
        (args.level, base.level))))
    settings = {
        "inputs": list(args.inputs) or [Path(p) for p in d.inputs],
        "out": args.out or Path(d.store),
        "geometry_name": args.geometry or d.geometry,
        "layout": layout,
        "validation_fraction": args.validation_fraction if args.validation_fraction is not None
        else (d.validation_fraction if d is not None else 0.1),
        "split_seed": args.split_seed if args.split_seed is not None else (d.split_seed if d is not None else 0),
    }
    if d is not None and not args.inputs:
        rank = comm.Get_rank() if comm is not None else 0
        error = None
        if rank == 0:
            try:
                prepare_standins(cfg, progress=not args.quiet)
            except (InputError, ConfigError, OSError) as err:
                error = err
        if comm is not None:  # the other ranks wait here until rank 0 has simulated (or failed)
            error = comm.bcast(error, root=0)
        if error is not None:
            raise error
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    comm = None
    try:
        comm = world_comm()
        settings = settings_from_args(args, comm)
        convert(**settings, overwrite=args.overwrite, comm=comm, progress=not args.quiet)
    except (InputError, StoreError, ConfigError, RuntimeError) as err:  # RuntimeError: MPI set-up
        if comm is None or comm.Get_rank() == 0:
            print(f"convert: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:  # writing failed (disk full, I/O error): the store stays incomplete, a re-run resumes
        print(f"convert: error: writing {err.filename or 'the store'} failed: {err.strerror or err}; finished shards "
              f"are kept and the same command resumes once this is fixed", file=sys.stderr)
        return EXIT_STORAGE
    return 0


if __name__ == "__main__":
    catch_from_start(immediate=True)  # SIGUSR1/SIGTERM: stop now (everything is published atomically), exit 75
    run_main(main)
