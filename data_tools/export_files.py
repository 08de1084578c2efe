"""A sample exported as several CaloChallenge HDF5 files of a fixed size, with an index written
last.

    python -m data_tools.export SAMPLE.zarr --out DIR/1M.hdf5 --rows-per-file 100000
    ->  DIR/1M_1.hdf5 (rows 0-99999), DIR/1M_2.hdf5, ..., DIR/1M.files.json

Files are numbered from 1, like the official dataset files (``dataset_2_1.hdf5``, ...); each one is
a complete CaloChallenge file on its own (:func:`data_tools.export_file.export` of its rows, written
as ``FILE.partial`` and renamed). The index (``STEM.files.json``,
:func:`pipeline.data.run_layout.export_index`) names every file with its rows and size; it is
written last and atomically, so it marks the export complete. A re-run skips every file that is
already the export of its rows of this very sample and writes the others, so an export killed
mid-file resumes at that file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_tools.export_file import (
    EXPORTER,
    ExportError,
    block_ranges,
    export,
    is_same_export,
    open_sample,
    sample_fingerprint,
)
from pipeline.data.run_layout import export_index
from pipeline.runtime.files import atomic_write_json, utc_now

INDEX_FORMAT = "calo-export-index"


def file_paths(out: Path, n_files: int) -> list[Path]:
    """``STEM_1.hdf5`` ... ``STEM_K.hdf5`` beside ``out`` (``STEM.hdf5``)."""
    return [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(1, n_files + 1)]


def read_index(index: Path) -> dict[str, Any]:
    """The index of a multi-file export; ExportError naming the file if it is not one."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{index}: cannot read the export index: {err}") from None
    if (
        not isinstance(data, dict)
        or data.get("format") != INDEX_FORMAT
        or not isinstance(data.get("files"), list)
    ):
        raise ExportError(
            f"{index}: not an export index (expected JSON with format {INDEX_FORMAT!r} and a "
            f"'files' list)"
        )
    return data


def is_same_file_export(out: Path, sample: str | Path, rows_per_file: int, dtype: str) -> bool:
    """Whether ``out``'s index describes exactly this export of the current ``sample``."""
    index = export_index(out)
    if not index.is_file():
        return False
    try:
        data = read_index(index)
    except ExportError:
        return False
    store = open_sample(sample)
    return (
        data.get("sample_fingerprint") == sample_fingerprint(store)
        and data.get("n") == store.n
        and data.get("rows_per_file") == rows_per_file
        and data.get("dtype") == dtype
    )


def export_files(
    sample: str | Path,
    out: str | Path,
    rows_per_file: int,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Export the whole ``sample`` as files of ``rows_per_file`` showers named after ``out``;
    returns the index. Files that already hold their rows of this sample are kept (resume); any
    other file in the way is an error unless ``overwrite``."""
    if rows_per_file < 1:
        raise ExportError(f"rows per file must be >= 1, got {rows_per_file}")
    out = Path(out)
    if out.suffix != ".hdf5":
        raise ExportError(
            f"{out}: --out must end in .hdf5 (the files are named STEM_1.hdf5, STEM_2.hdf5, ...)"
        )
    if not out.parent.is_dir():
        raise ExportError(f"{out}: output directory {out.parent} does not exist")
    store = open_sample(sample)
    index = export_index(out)
    index.unlink(missing_ok=True)  # the export is incomplete until the new index is written
    ranges = block_ranges(0, store.n, rows_per_file)
    files = []
    for path, (a, b) in zip(file_paths(out, len(ranges)), ranges):
        if not is_same_export(path, store, a, b, dtype):
            if path.exists() and not overwrite:
                raise ExportError(
                    f"{path}: already exists and is not the export of rows {a}-{b} of {sample}; "
                    f"pass --overwrite to replace it"
                )
            export(
                sample,
                path,
                start=a,
                stop=b,
                dtype=dtype,
                overwrite=True,
                progress=progress,
                workers=workers,
            )
        files.append({"name": path.name, "start": a, "stop": b, "bytes": path.stat().st_size})
    atomic_write_json(
        index,
        {
            "format": INDEX_FORMAT,
            "format_version": 1,
            "exporter": EXPORTER,
            "sample": str(Path(sample).resolve()),
            "sample_fingerprint": sample_fingerprint(store),
            "geometry": store.geometry.name,
            "n": store.n,
            "rows_per_file": rows_per_file,
            "dtype": dtype,
            "units": "MeV",
            "files": files,
            "written_at": utc_now(),
        },
    )
    return index
