"""Speed of the stand-in shower simulator (data_tools.simulate / data_tools.shower_model).

    .venv/bin/python benchmarks/simulate_speed.py [--n-ds3 2000] [--n-ds2 5000] [--workers 1 2]

Two measurements per geometry, log-uniform 1 GeV - 1 TeV incident energies:
* model: ``simulate_showers`` in this process (blocks of 256 showers, float32, nothing written);
* file: ``simulate_file`` end to end (float64 HDF5, gzip level 4, written under --tmp and deleted),
  for each worker count; includes the start of the worker processes.
Prints a markdown table; "per process" is showers/s divided by the number of processes that simulate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_tools.shower_model import sample_incident_energies, simulate_showers
from data_tools.simulate import simulate_file
from pipeline.physics.geometry import load_geometry


def bench_model(name: str, n: int, seed: int = 1) -> float:
    """Seconds to simulate n showers in-process."""
    g = load_geometry(name)
    e = sample_incident_energies(n, seed)
    simulate_showers(g, e[:64], seed)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    for a in range(0, n, 256):
        simulate_showers(g, e[a : a + 256], seed, a)
    return time.perf_counter() - t0


def bench_file(name: str, n: int, workers: int, tmp: Path, dtype: str, seed: int = 1) -> tuple[float, int]:
    """Seconds to write an n-shower file with `workers` processes, and the file size."""
    path = tmp / f"bench_{name}_{workers}.hdf5"
    t0 = time.perf_counter()
    simulate_file(path, name, n, seed, workers=workers, dtype=dtype, overwrite=True)
    dt = time.perf_counter() - t0
    size = path.stat().st_size
    path.unlink()
    return dt, size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-ds3", type=int, default=2000)
    p.add_argument("--n-ds2", type=int, default=5000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    p.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    args = p.parse_args()
    print(f"# {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print("| geometry | what | workers | showers | seconds | showers/s | per process | ms/shower/process | file MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n in (("ds3", args.n_ds3), ("ds2", args.n_ds2)):
        dt = bench_model(name, n)
        print(f"| {name} | model only | 1 | {n} | {dt:.2f} | {n / dt:.0f} | {n / dt:.0f} | {1e3 * dt / n:.2f} | - |",
              flush=True)
        for w in args.workers:
            dt, size = bench_file(name, n, w, args.tmp, args.dtype)
            print(f"| {name} | file {args.dtype} gzip | {w} | {n} | {dt:.2f} | {n / dt:.0f} | {n / dt / w:.0f} | "
                  f"{1e3 * dt * w / n:.2f} | {size / 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
