"""Digests of what `make demo` produced: weights, EMA, generated showers and AUCs of one run directory.

Two trees that must behave the same (a refactor, a rename) are compared by running the demo in each and
diffing this script's output:

    python -m pipeline.demo --config configs/smoke.yaml --set run.dir=/tmp/demo_a
    python benchmarks/demo_digests.py /tmp/demo_a > a.txt      # ... same for the other tree, then diff
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
from safetensors.numpy import load_file

from pipeline.models.ema_weights import current_key


def tensor_digest(path: Path) -> str:
    """sha256 over a safetensors file's tensors, in name order, under today's names (older files say
    ``voxel_unet.*``; independent of the file's metadata)."""
    h = hashlib.sha256()
    for name, array in sorted((current_key(k), v) for k, v in load_file(str(path)).items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def digests(run: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(run.rglob("*.safetensors")):
        out[str(path.relative_to(run))] = tensor_digest(path)
    for path in sorted(run.rglob("generated.hdf5")):
        with h5py.File(path, "r") as f:
            for key in sorted(f):
                out[f"{path.relative_to(run)}:{key}"] = hashlib.sha256(f[key][()].tobytes()).hexdigest()[:16]
    for path in sorted(run.rglob("report.json")):
        report = json.loads(path.read_text())
        for kind, result in sorted(report.get("classifier", {}).items()):
            aucs = [round(r["auc"], 6) for r in result.get("runs", [])]
            out[f"{path.relative_to(run)}:classifier.{kind}.auc"] = str(aucs)
        for key, value in sorted(report.get("separation_power", {}).get("summary", {}).items()):
            out[f"{path.relative_to(run)}:separation.{key}"] = json.dumps(value, sort_keys=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    for key, value in digests(parser.parse_args().run_dir).items():
        print(f"{key}  {value}")


if __name__ == "__main__":
    main()
