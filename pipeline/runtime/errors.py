"""Errors of the runtime layer that several of its modules raise."""

from __future__ import annotations


class DistributedError(RuntimeError):
    """The launcher's environment is inconsistent or cannot be used."""
