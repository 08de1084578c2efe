"""MPI communicator for data tools that run under ``mpirun``/``srun`` (mpi4py), or None alone.

mpi4py is imported only when a launcher's variables say several ranks were started, so a single
process never needs an MPI library. Under SLURM, ``srun`` without ``--mpi=pmi2`` starts tasks that
each believe they are rank 0 of 1; that is detected and reported instead of converting N times.
"""

from __future__ import annotations

import os
from typing import Any

_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")


class MPIError(RuntimeError):
    """MPI was expected (several ranks launched) but cannot be used."""


def launched_ranks() -> int:
    """Number of ranks the launcher's environment announces (1 when none)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def world_comm() -> Any | None:
    """``MPI.COMM_WORLD`` when more than one rank was launched, else None."""
    expected = launched_ranks()
    if expected == 1 and "PMIX_RANK" not in os.environ and "PMI_RANK" not in os.environ:
        return None
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise MPIError(f"{expected} ranks were launched but mpi4py cannot be imported: {err}") from err
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        if expected > 1:
            raise MPIError(
                f"the launcher started {expected} tasks but MPI sees a world of 1; under SLURM use "
                "`srun --mpi=pmi2` (or pmix) so that the tasks form one MPI job"
            )
        return None
    return comm
