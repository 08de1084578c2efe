"""Write CaloChallenge-format files of simulated ds2/ds3 showers (stand-in for the Geant4 data).

    python -m data_tools.simulate --geometry ds3 --n 100000 --out FILE.hdf5 --seed S [--workers K]

The file holds ``incident_energies`` (N, 1) and ``showers`` (N, V) in MeV, gzip-compressed, voxel
order (layer, angle, radius), radius fastest. Incident energies are log-uniform in
[1 GeV, 1 TeV] by default; ``--energy E`` fixes them; ``--energies E1,E2,...`` cycles through the
list (shower i gets ``E[i % len]``). Shower i (global index ``first_index + row``) depends only on
``(seed, i)``, so the file is the same for any ``--workers`` and ranges written separately
(``--first-index``) equal the corresponding rows of one big file.

Showers are produced in chunk-aligned blocks; workers also deflate their HDF5 chunks (standard
zlib streams, as the HDF5 gzip filter stores them), and the parent stores the compressed chunks
in order (``write_direct_chunk``), so only a few blocks are in memory and compression scales
with the workers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from data_tools.shower_model import (
    DEFAULT_PARAMS,
    E_MAX_MEV,
    E_MIN_MEV,
    ShowerParams,
    check_geometry,
    sample_incident_energies,
    simulate_showers,
)
from pipeline.data.calochallenge_hdf5 import ENERGY_KEY, SHOWER_KEY, shower_file_writer, write_chunk
from pipeline.physics.geometry import GEOMETRY_FILES, load_geometry

SUPPORTED_GEOMETRIES = ("ds2", "ds3")
CHUNK_BYTES = 4 << 20  #: target size of one uncompressed HDF5 chunk
TASK_BYTES = 32 << 20  #: target uncompressed size of one worker task (a whole number of chunks)


@dataclass(frozen=True)
class _Task:
    geometry: str
    params: ShowerParams
    seed: int
    first_index: int  # global index of file row 0
    energies: np.ndarray  # energies of rows [row_start, row_stop)
    row_start: int
    row_stop: int
    chunk_rows: int
    dtype: str
    level: int


def _deflate(data: bytes, level: int) -> bytes:
    """zlib stream as the HDF5 gzip (deflate) filter stores it. The run-length strategy compresses
    the zero-dominated showers as well as the default strategy at level 4, 2-3x faster."""
    comp = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_RLE)
    return comp.compress(data) + comp.flush()


def _run_task(task: _Task) -> tuple[int, list[bytes]]:
    """Simulate rows [row_start, row_stop) and return (index of its first chunk, deflated chunks)."""
    geometry = load_geometry(task.geometry)
    showers = simulate_showers(
        geometry, task.energies, task.seed, task.first_index + task.row_start, params=task.params, dtype=task.dtype
    )
    chunks = []
    for a in range(0, showers.shape[0], task.chunk_rows):
        block = showers[a : a + task.chunk_rows]
        if block.shape[0] < task.chunk_rows:  # HDF5 stores edge chunks at full size
            block = np.concatenate([block, np.zeros((task.chunk_rows - block.shape[0], block.shape[1]), block.dtype)])
        chunks.append(_deflate(np.ascontiguousarray(block).tobytes(), task.level))
    return task.row_start // task.chunk_rows, chunks


def _tasks(
    geometry: str, params: ShowerParams, seed: int, first_index: int, energies: np.ndarray,
    chunk_rows: int, task_rows: int, dtype: str, level: int,
) -> Iterator[_Task]:
    n = energies.size
    for a in range(0, n, task_rows):
        b = min(a + task_rows, n)
        yield _Task(geometry, params, seed, first_index, energies[a:b], a, b, chunk_rows, dtype, level)


def simulate_file(
    path: str | Path,
    geometry_name: str,
    n: int,
    seed: int,
    *,
    first_index: int = 0,
    energy: float | None = None,
    energies: Sequence[float] | None = None,
    workers: int = 1,
    dtype: str = "float64",
    overwrite: bool = False,
    params: ShowerParams = DEFAULT_PARAMS,
    compression_level: int = 4,
    progress: bool = False,
) -> Path:
    """Simulate showers ``first_index .. first_index+n-1`` into a CaloChallenge HDF5 file at ``path``.

    Incident energies come from :func:`~data_tools.shower_model.sample_incident_energies`. The
    output bytes do not depend on ``workers``. Returns the path. Raises ValueError on bad
    arguments and FileExistsError / FileNotFoundError from the writer; no file is left on failure.
    Workers are started with the ``spawn`` method: a calling script needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    if geometry_name not in SUPPORTED_GEOMETRIES:
        raise ValueError(f"geometry {geometry_name!r} is not supported; use one of {SUPPORTED_GEOMETRIES}")
    geometry = load_geometry(geometry_name)
    check_geometry(geometry)
    if n <= 0 or workers < 1 or seed < 0 or first_index < 0:
        raise ValueError("n and workers must be positive, seed and first_index non-negative")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if not 1 <= compression_level <= 9:
        raise ValueError("compression_level must be in 1..9")
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite to replace it)")
    e = sample_incident_energies(n, seed, first_index, energy=energy, energies=energies)
    row_bytes = geometry.n_voxels * np.dtype(dtype).itemsize
    chunk_rows = max(1, min(n, CHUNK_BYTES // row_bytes))
    task_rows = chunk_rows * max(1, TASK_BYTES // (chunk_rows * row_bytes))
    tasks = _tasks(geometry_name, params, seed, first_index, e, chunk_rows, task_rows, dtype, compression_level)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    t0 = last = time.monotonic()
    try:
        results = pool.imap(_run_task, tasks) if pool is not None else map(_run_task, tasks)
        with shower_file_writer(
            path, n, geometry.n_voxels, dtype=dtype, chunk_rows=chunk_rows,
            compression_level=compression_level, overwrite=overwrite,
        ) as f:
            f[ENERGY_KEY][:] = e[:, None]
            dset = f[SHOWER_KEY]
            if dset.chunks != (chunk_rows, geometry.n_voxels) or dset.compression != "gzip":
                raise RuntimeError(f"unexpected dataset layout {dset.chunks} {dset.compression}")
            done = 0
            for first_chunk, chunks in results:
                for k, data in enumerate(chunks):
                    write_chunk(dset, (first_chunk + k) * chunk_rows, data)
                done = min(n, (first_chunk + len(chunks)) * chunk_rows)
                if progress and time.monotonic() - last > 5:
                    last = time.monotonic()
                    print(f"  {done}/{n} showers ({done / (last - t0):.0f}/s)", file=sys.stderr, flush=True)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return Path(path)


# ----------------------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer below 2**63, got {value}")
    return value


def _energy(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an energy in MeV, got {text!r}") from None
    if not E_MIN_MEV <= value <= E_MAX_MEV:  # also rejects nan
        raise argparse.ArgumentTypeError(
            f"{text} MeV is outside the supported range [{E_MIN_MEV:g}, {E_MAX_MEV:g}] MeV (1 GeV .. 1 TeV)"
        )
    return value


def _energy_list(text: str) -> list[float]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of energies in MeV")
    return [_energy(item) for item in items]


def _geometry(text: str) -> str:
    if text in SUPPORTED_GEOMETRIES:
        return text
    if text in GEOMETRY_FILES or text.startswith("ds1"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not supported: ds1 layers have different binnings; use one of {', '.join(SUPPORTED_GEOMETRIES)}"
        )
    raise argparse.ArgumentTypeError(f"unknown geometry {text!r}; choose from {', '.join(SUPPORTED_GEOMETRIES)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_tools.simulate",
        description="Simulate CaloChallenge ds2/ds3-format EM showers (GFlash binned-spot stand-in) into an HDF5 file.",
    )
    p.add_argument("--geometry", required=True, type=_geometry, help="ds2 or ds3")
    p.add_argument("--n", required=True, type=_positive_int, help="number of showers")
    p.add_argument("--out", required=True, type=Path, help="output HDF5 file")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--energy", type=_energy, help="fixed incident energy in MeV (default: log-uniform 1 GeV..1 TeV)")
    g.add_argument(
        "--energies", type=_energy_list,
        help="comma-separated energies in MeV, cycled: shower i (global index) gets E[i %% len]"
    )
    p.add_argument(
        "--first-index", type=_non_negative_int, default=0,
        help="global index of the first shower (to write one range of a larger set; default 0)",
    )
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="output dtype (default float64)")
    p.add_argument("--compression-level", type=int, choices=range(1, 10), default=4, metavar="1..9",
                   help="gzip level recorded in the file and used by zlib (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


def _check_out(parser: argparse.ArgumentParser, out: Path, overwrite: bool) -> None:
    """Reject an output path that cannot be written, before any work (argparse error, exit 2)."""
    if out.is_dir():
        parser.error(f"argument --out: {out} is a directory")
    if out.exists() and not overwrite:
        parser.error(f"argument --out: {out} already exists (pass --overwrite to replace it)")
    parent = out.parent
    if not parent.is_dir():
        parser.error(f"argument --out: directory {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.probe"):
            pass
    except OSError as err:
        parser.error(f"argument --out: cannot write in {parent}: {err.strerror or err}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_out(parser, args.out, args.overwrite)
    t0 = time.monotonic()
    try:
        simulate_file(
            args.out, args.geometry, args.n, args.seed, first_index=args.first_index, energy=args.energy,
            energies=args.energies, workers=args.workers, dtype=args.dtype, overwrite=args.overwrite,
            compression_level=args.compression_level, progress=not args.quiet,
        )
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        dt = time.monotonic() - t0
        print(f"wrote {args.n} {args.geometry} showers to {args.out} in {dt:.1f} s ({args.n / dt:.0f} showers/s)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
