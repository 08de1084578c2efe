"""Crash-safe files: write through a synced temporary file and a rename, and UTC timestamps.

A reader never sees a half-written file: it sees the previous version or the new one. Completion markers
(``DONE.json``, ``manifest.json``, block markers, checkpoint ``latest``) are written this way, last.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file or directory to disk (best effort on filesystems without directory fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def atomic_write_json(path: str | Path, obj: object) -> None:
    """:func:`atomic_write_bytes` of indented, key-sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (timestamps in DONE.json, markers, manifests)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | Path, block: int = 1 << 24) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            digest.update(data)
    return digest.hexdigest()
