"""An exclusive lock on a shared filesystem that a crashed holder does not keep forever.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems, NFSv3+ and Lustre)
holding the holder's host, pid and time. Another process may take it over when it is stale: its holder
was on this host and is gone, or it is older than ``stale_seconds`` (a holder on another host cannot be
asked). Used where exactly one of many ranks or array jobs must do something, e.g. finalise a sample.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class LockFile:
    """``with LockFile(path) as got:`` -- ``got`` is True for the one process that holds the lock."""

    def __init__(self, path: str | Path, stale_seconds: float = 600.0) -> None:
        self.path = Path(path)
        self.stale_seconds = stale_seconds
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.acquired_at: float | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock (host, pid, token, time), or None when it is free or unreadable."""
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def is_stale(self, holder: dict[str, Any] | None) -> bool:
        if holder is None:  # being written right now, or garbage: judge by the file's age
            try:
                return time.time() - self.path.stat().st_mtime > self.stale_seconds
            except FileNotFoundError:
                return True
        if holder.get("host") == self.me["host"] and not _alive(int(holder.get("pid", -1))):
            return True
        return time.time() - float(holder.get("time", 0)) > self.stale_seconds

    def acquire(self) -> bool:
        """Take the lock if it is free or stale; False when a live holder has it."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if not self.is_stale(holder):
                    return False
                self._break(holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**self.me, "time": time.time()}, f)
                f.flush()
                os.fsync(f.fileno())
            self.acquired_at = time.time()
            return True
        return False

    def _break(self, stale: dict[str, Any] | None) -> None:
        """Move a stale lock out of the way, unless it changed since it was judged stale."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self.me['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process broke it first
        try:
            moved = json.loads(aside.read_text())
        except ValueError:
            moved = None
        if stale is not None and moved != stale:  # a fresh lock slipped in between: give it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if self.acquired_at is not None and (self.holder() or {}).get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)
        self.acquired_at = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
