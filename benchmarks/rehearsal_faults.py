"""The fault cases of benchmarks/production_rehearsal.py: bytes compared with an uninterrupted run,
an export onto a filesystem that fills up, then has space freed."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

PY = sys.executable


def shard_digests(sample: Path) -> dict[str, str]:
    """sha256 of every chunk/shard file of a zarr sample (the metadata, with its dates, left
    out)."""
    return {
        str(f.relative_to(sample)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(sample.rglob("*"))
        if f.is_file() and f.name != "zarr.json"
    }


def full_disk_export(
    args: argparse.Namespace, common: list[str], log: Path, export_bytes: int, timed: Callable
) -> dict[str, Any]:
    """The export onto a filesystem with only ``--full-disk-gb`` free (a loop-mounted ext4 image
    big enough for the export, filled by a ballast file): the error, then, with the ballast
    removed (space freed), the same command again."""
    image, mnt = args.workdir / "full_disk.img", args.workdir / "full_disk"
    mnt.mkdir(exist_ok=True)
    size_mb = int(1.2 * export_bytes / 2**20) + 1024
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        fs = os.statvfs(mnt)
        ballast = mnt / "ballast"
        free = int(args.full_disk_gb * 2**30)
        subprocess.run(["fallocate", "-l", str(fs.f_bavail * fs.f_frsize - free), str(ballast)],
                       check=True)
        out_args = [*common, "--set", f"generate.export={mnt}/generated.hdf5", "--quiet"]
        first = timed([PY, "-m", "data_tools.export", *out_args], log, check=False)
        first["files_kept"] = sorted(f.name for f in mnt.glob("*.hdf5"))
        first["partial_left"] = sorted(f.name for f in mnt.glob("*.partial"))
        first["message"] = [
            line for line in log.read_text().splitlines() if "export: error" in line
        ][-1:]
        kept = {f.name: f.stat().st_mtime_ns for f in mnt.glob("*.hdf5")}
        ballast.unlink()
        second = timed([PY, "-m", "data_tools.export", *out_args], log)
        second["files_rewritten"] = sorted(n for n, t in kept.items()
                                           if (mnt / n).stat().st_mtime_ns != t)
        index = mnt / "generated.files.json"
        second["verify"] = timed([PY, "-m", "data_tools.inspect", str(index), "--verify"], log)
        return {"filesystem_mb": size_mb, "free_gb": args.full_disk_gb, "first": first,
                "rerun_after_freeing_space": second}
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink(missing_ok=True)
