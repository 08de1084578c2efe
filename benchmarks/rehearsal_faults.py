"""The fault cases of benchmarks/production_rehearsal.py: bytes compared with an uninterrupted run,
an export onto a filesystem that fills up and is then grown."""

from __future__ import annotations

import argparse
import hashlib
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
    args: argparse.Namespace, common: list[str], log: Path, sample_bytes: int, timed: Callable
) -> dict[str, Any]:
    """The export onto a filesystem too small for it, then grown: the error, then the resumed
    run."""
    image, mnt = args.workdir / "full_disk.img", args.workdir / "full_disk"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["truncate", "-s", f"{int(args.full_disk_gb * 1024)}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        out_args = [*common, "--set", f"generate.export={mnt}/generated.hdf5", "--quiet"]
        first = timed([PY, "-m", "data_tools.export", *out_args], log, check=False)
        first["files_kept"] = sorted(f.name for f in mnt.glob("*.hdf5"))
        first["partial_left"] = sorted(f.name for f in mnt.glob("*.partial"))
        first["message"] = [
            line for line in log.read_text().splitlines() if "export: error" in line
        ][-1:]
        grow = f"{int(1024 * (args.full_disk_gb + 1.3 * sample_bytes / 2**30)) + 1024}M"
        subprocess.run(["truncate", "-s", grow, str(image)], check=True)
        loop = subprocess.run(["findmnt", "-no", "SOURCE", str(mnt)], capture_output=True,
                              text=True, check=True).stdout.strip()
        subprocess.run(["losetup", "-c", loop], check=True)  # the loop device sees the new size
        subprocess.run(["resize2fs", loop], check=True, capture_output=True)  # grown while mounted
        second = timed([PY, "-m", "data_tools.export", *out_args], log)
        index = mnt / "generated.files.json"
        second["verify"] = timed([PY, "-m", "data_tools.inspect", str(index), "--verify"], log)
        return {"size_gb": args.full_disk_gb, "first": first, "grown_to": grow, "rerun": second}
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink(missing_ok=True)
