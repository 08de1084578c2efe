"""Stand-in input files: simulate a configured CaloChallenge file when it is missing.

:func:`prepare_standins` makes the files a config names exist (``data.inputs`` with ``data.standin``,
``evaluate.reference`` with ``evaluate.reference_standin``), so that a laptop or CI machine runs the whole
chain on the project's own simulator (``data_tools.simulate``). The chain's first stage
(``data_tools.convert --config``) and the demo call it; the later stages only read the files.

The file is simulated under a unique temporary name beside its target and renamed into place, so
an interrupted run leaves nothing that looks complete, and concurrent runs (two stages, or ranks
that did not coordinate) never clobber each other: the simulation is deterministic, so whichever
rename lands last installs the same bytes.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.calochallenge_hdf5 import InputError

if TYPE_CHECKING:
    from pipeline.config import Config, StandinConfig

#: the config key that turns on simulation for a config key holding an input path
STANDIN_KEYS = {"data.inputs": "data.standin", "evaluate.reference": "evaluate.reference_standin"}


def ensure_standin(path: str | Path, standin: StandinConfig | None, geometry: str, role: str, *, standin_key: str | None = None,
                   progress: bool = True) -> Path:
    """Make sure ``path`` exists: simulate it from ``standin`` (a ``StandinConfig``) when it is missing.

    ``role`` is the config key that names ``path`` (``data.inputs``, ``evaluate.reference``) and
    appears in the errors; ``standin_key`` the key of the stand-in settings (default from ``role``).
    Raises :class:`InputError` when the file is missing and ``standin`` is None.
    """
    path = Path(path)
    if path.exists():
        return path
    key = standin_key or STANDIN_KEYS.get(role, f"{role} stand-in")
    if standin is None:
        raise InputError(f"{role}: {path} does not exist (and {key} is not set to simulate it)")
    if path.suffix == ".zarr":
        raise InputError(f"{role}: {path}: stand-in data is simulated as a CaloChallenge HDF5 file; "
                         f"name it *.hdf5 (or convert it afterwards) when {key} is set")
    from data_tools.simulate import simulate_file

    if progress:
        print(f"[standin] simulating {standin.n} stand-in {geometry} showers (seed {standin.seed}) -> {path} ({role})",
              flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            simulate_file(tmp, geometry, standin.n, seed=standin.seed, workers=standin.workers)
        except ValueError as err:  # e.g. a geometry the simulator does not support
            raise InputError(f"{role}: cannot simulate stand-in {path} ({key}): {err}") from err
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def prepare_standins(cfg: Config, *, progress: bool = True) -> list[Path]:
    """Simulate every missing stand-in file of ``cfg``: its inputs and its evaluation reference.

    Raises :class:`InputError` for a missing input without stand-in settings; a missing reference
    without ``evaluate.reference_standin`` is left to the evaluation to report.
    """
    d, e = cfg.data, cfg.evaluate
    paths = [ensure_standin(path, d.standin, d.geometry, "data.inputs", progress=progress) for path in d.inputs]
    if e.reference is not None and e.reference_standin is not None:
        paths.append(ensure_standin(e.reference, e.reference_standin, d.geometry, "evaluate.reference",
                                    progress=progress))
    return paths
