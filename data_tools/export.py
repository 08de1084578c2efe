"""Export a zarr shower sample (generated or converted) as CaloChallenge HDF5: one file, or files of a fixed size.

    python -m data_tools.export SAMPLE.zarr --out FILE.hdf5 [--start I --stop J] [--dtype float64]
    python -m data_tools.export SAMPLE.zarr --out DIR/1M.hdf5 --rows-per-file 100000   # 1M_1.hdf5 ... + 1M.files.json
    python -m data_tools.export --config CFG [--set K=V]     # sample, file(s) and dtype from the config

One file: :mod:`data_tools.export_file` (streamed block by block, written as ``FILE.partial`` and renamed,
so memory stays bounded and an interrupted export never looks complete). Several files:
:mod:`data_tools.export_files` (each file complete on its own, an index written last; a re-run keeps the
finished files). A finished export of the same sample is skipped, so re-running the command is safe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from data_tools.export_file import (
    ExportError,
    default_workers,
    export,
    is_same_export,
    open_sample,
    resolve_range,
)
from data_tools.export_files import export_files, is_same_file_export
from pipeline.config import ConfigError, add_config_arguments, load_config
from pipeline.data import run_layout
from pipeline.data.calochallenge_hdf5 import InputError
from pipeline.data.run_layout import export_index
from pipeline.data.shower_store import StoreError
from pipeline.runtime.exit_codes import EXIT_CONFIG, EXIT_STORAGE
from pipeline.runtime.signals import catch_from_start, run_main

__all__ = ["ExportError", "export", "export_files", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_tools.export", description=__doc__.split("\n\n")[0])
    p.add_argument("sample", nargs="?", type=Path, help="zarr sample or store (default with --config: the generated sample)")
    p.add_argument("--out", type=Path, help="CaloChallenge HDF5 file to write (default with --config: generate.export)")
    p.add_argument("--start", type=int, default=0, help="first row to export (default 0)")
    p.add_argument("--stop", type=int, help="row after the last one to export (default: all)")
    p.add_argument("--dtype", choices=("float32", "float64"),
                   help="dtype of both datasets (default float32; with --config generate.export_dtype)")
    p.add_argument("--rows-per-file", type=int, metavar="K",
                   help="write the whole sample as files of K showers, OUT_1.hdf5, OUT_2.hdf5, ..., and the index "
                        "OUT.files.json (default: one file; with --config generate.export_rows_per_file)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="threads compressing the output (default: the usable cores, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(p, required=False)
    return p


def already_exported(sample: str | Path, out: Path, start: int, stop: int | None, dtype: str, quiet: bool) -> bool:
    """Whether ``out`` is already this very export (a re-run after it finished, or after a kill that came
    between the final rename and the exit): then there is nothing to do."""
    store = open_sample(sample)
    start, stop = resolve_range(store, start, stop)
    if not is_same_export(out, store, start, stop, dtype):
        return False
    if not quiet:
        print(f"export: {out} is already an export of {sample} (rows {start}-{stop}, {dtype}); nothing to do")
    return True


def export_one(args: argparse.Namespace, sample: Path, out: Path, dtype: str, from_config: bool) -> Path | None:
    """Rows ``--start``..``--stop`` into the one file ``out``; None when it is already that export."""
    if out.exists() and not args.overwrite:
        if already_exported(sample, out, args.start, args.stop, dtype, args.quiet):
            return None
        if from_config:
            raise ExportError(f"{out}: already exists and is not an export of the current {sample} "
                              f"(rows {args.start}-{args.stop if args.stop is not None else 'end'}, {dtype}); "
                              f"pass --overwrite to replace it")
    return export(sample, out, start=args.start, stop=args.stop, dtype=dtype, overwrite=args.overwrite,
                  progress=not args.quiet, workers=args.workers)


def export_many(args: argparse.Namespace, sample: Path, out: Path, dtype: str, rows: int) -> Path | None:
    """The whole sample as files of ``rows`` showers; None when the index says it is already done."""
    if args.start != 0 or args.stop is not None:
        raise ExportError("--rows-per-file exports the whole sample; --start/--stop select the rows of one file")
    if not args.overwrite and is_same_file_export(out, sample, rows, dtype):
        if not args.quiet:
            print(f"export: {export_index(out)} already lists an export of {sample} ({rows} rows per file, "
                  f"{dtype}); nothing to do")
        return None
    return export_files(sample, out, rows, dtype=dtype, overwrite=args.overwrite, progress=not args.quiet,
                        workers=args.workers)


def run(args: argparse.Namespace) -> Path | None:
    """Paths, dtype and file size from the arguments, else (with ``--config``) from the config."""
    sample, out, dtype, rows = args.sample, args.out, args.dtype or "float32", args.rows_per_file
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
        sample = sample or run_layout.sample_path(cfg)
        out = out or run_layout.export_path(cfg)
        dtype = args.dtype or cfg.generate.export_dtype
        rows = cfg.generate.export_rows_per_file if rows is None else rows
        out.parent.mkdir(parents=True, exist_ok=True)
    if rows:
        return export_many(args, sample, out, dtype, rows)
    return export_one(args, sample, out, dtype, args.config is not None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is None:
        if args.sample is None or args.out is None:
            parser.error("give SAMPLE and --out, or --config")
        if args.overrides:
            parser.error("--set needs --config")
    try:
        out = run(args)
    except (ExportError, StoreError, InputError, ConfigError) as err:
        print(f"export: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:  # writing failed: nothing is published (the file is written as FILE.partial)
        print(f"export: error: writing {err.filename or 'the export'} failed: {err.strerror or err}; no export "
              f"file was published", file=sys.stderr)
        return EXIT_STORAGE
    if out is not None and not args.quiet:
        print(f"export: wrote {out}")
    return 0


if __name__ == "__main__":
    catch_from_start(immediate=True)  # SIGUSR1/SIGTERM: stop now (everything is published atomically), exit 75
    run_main(main)
