"""Fuzzed bad input (hypothesis): CaloChallenge-like HDF5 files with wrong keys, shapes, dtypes,
NaN/inf/negative values, zero rows or truncated bytes go through convert, inspect, evaluate and
generate's ``energies_from``; broken stores through export; random configs and ``--set`` overrides
through the config loader. Every case either works or ends in a clear error (exit 2) that names the
file, key or config path; no traceback, and no store or sample is ever marked complete by a failed
run. The commands run in-process (``main(argv)``) so that 200 cases per test take seconds
(``CALO_FUZZ_EXAMPLES=N`` for a longer search)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_tools.convert import main as convert_main
from data_tools.export import main as export_main
from data_tools.inspect import main as inspect_main
from pipeline.config import ConfigError, load_config
from pipeline.data.shower_store import read_attrs
from pipeline.evaluation.command import main as evaluate_main
from pipeline.generation.energies import IncidentEnergies

from conftest import REPO, make_generated, write_random_showers

FUZZ = settings(max_examples=int(os.environ.get("CALO_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
V = 6480  # ds2 voxels


def run(main, argv: list[str]) -> tuple[int, str]:  # noqa: ANN001 - a command's main
    """``main(argv)`` with stderr captured; SystemExit (argparse) counts as its code."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
    return int(code or 0), err.getvalue()


# ------------------------------------------------------------------ CaloChallenge-like files
bad_value = st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 1e39])


DEFECTS = ["missing key", "extra key", "energy shape", "shower shape", "dtype", "energy value",
           "shower value", "truncated", "group", "zero rows"]


@st.composite
def calo_files(draw) -> dict:
    """A valid small ds2 file description with zero to two defects (so most cases reach the deeper
    checks)."""
    n = draw(st.sampled_from([1, 3, 5]))
    spec = {"n": n, "keys": {"incident_energies", "showers"}, "energy_shape": (n, 1),
            "shower_shape": (n, V), "dtype": "float64", "energy_bad": None, "shower_bad": None,
            "truncate": None, "group_instead": False}
    for defect in draw(st.lists(st.sampled_from(DEFECTS), max_size=2, unique=True)):
        if defect == "missing key":
            spec["keys"] = spec["keys"] - {draw(st.sampled_from(["incident_energies", "showers"]))}
        elif defect == "extra key":
            spec["keys"] = spec["keys"] | {"extra"}
        elif defect == "energy shape":
            spec["energy_shape"] = draw(st.sampled_from([(n,), (n, 2), (n + 1, 1), ()]))
        elif defect == "shower shape":
            spec["shower_shape"] = draw(st.sampled_from([(n, V - 1), (n, 40500), (n + 1, V), (n,),
                                                          (n, 45, 144)]))
        elif defect == "dtype":
            spec["dtype"] = draw(st.sampled_from(["float32", "float16", "int32", "bool"]))
        elif defect == "energy value":
            spec["energy_bad"] = draw(bad_value)
        elif defect == "shower value":
            spec["shower_bad"] = draw(bad_value)
        elif defect == "truncated":
            spec["truncate"] = draw(st.floats(0.0, 0.99))
        elif defect == "group":
            spec["group_instead"] = True
        elif defect == "zero rows":
            spec["energy_shape"], spec["shower_shape"] = (0, 1), (0, V)
    return spec


def write_file(path: Path, spec: dict) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for key in spec["keys"]:
            if key == "extra":
                f["extra"] = np.arange(3)
                continue
            if spec["group_instead"] and key == "showers":
                f.create_group("showers")
                continue
            shape = spec["energy_shape"] if key == "incident_energies" else spec["shower_shape"]
            data = ((10 ** rng.uniform(3, 6, shape)) if key == "incident_energies"
                    else rng.gamma(1.0, 2.0, shape))
            bad = spec["energy_bad"] if key == "incident_energies" else spec["shower_bad"]
            if bad is not None and data.size:
                data.flat[rng.integers(data.size)] = bad
            with np.errstate(all="ignore"):
                f.create_dataset(key, data=data.astype(spec["dtype"]))
    if spec["truncate"] is not None:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(int(size * spec["truncate"]))


def assert_clear(code: int, err: str, *names: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        assert "error" in err and any(name in err for name in names), err


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "reference.hdf5"
    write_random_showers(path, 40, "ds2", seed=1)
    return path


@FUZZ
@given(spec=calo_files())
def test_bad_files_through_convert_inspect_evaluate_and_energies_from(tmp_path, reference, spec):
    work = tmp_path / "case"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    path = work / "in.hdf5"
    write_file(path, spec)

    code, err = run(convert_main, [str(path), "--geometry", "ds2", "--out", str(work / "s.zarr"),
                                   "--quiet"])
    assert_clear(code, err, str(path))
    if code:
        assert (read_attrs(work / "s.zarr") or {}).get("complete") is not True

    assert_clear(*run(inspect_main, [str(path)]), str(path))

    code, err = run(evaluate_main, ["--generated", str(path), "--reference", str(reference),
                                    "--geometry", "ds2", "--out", str(work / "eval"),
                                    "--classifiers", "none", "--no-plots",
                                    "--no-physics-distances", "--quiet", "--threads", "1"])
    assert_clear(code, err, str(path))
    if code:
        assert not (work / "eval" / "report.json").exists()

    try:
        energies = IncidentEnergies(0, (1e3, 1e6), str(path))
    except ConfigError as error:
        assert "generate.energies_from" in str(error) and str(path) in str(error)
    else:
        assert np.isfinite(energies.reference).all() and (energies.reference > 0).all()


# ------------------------------------------------------------------ stores for export
@st.composite
def broken_stores(draw) -> dict:
    return {
        "attrs": draw(st.sampled_from(["none", "other-format", "no-geometry", "incomplete", "ok"])),
        "drop": draw(st.sampled_from([None, "showers", "incident_energies"])),
        "generated": draw(st.booleans()),
        "manifest": draw(st.booleans()),
    }


def make_store(path: Path, spec: dict) -> None:

    make_generated(path, n=16, complete=spec["attrs"] != "incomplete")
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    attrs = meta["attributes"]
    if spec["attrs"] == "none":
        meta["attributes"] = {}
    elif spec["attrs"] == "other-format":
        attrs["format"] = "something-else"
    elif spec["attrs"] == "no-geometry":
        attrs.pop("geometry")
    if not spec["generated"]:
        attrs.pop("generation", None)
    meta_path.write_text(json.dumps(meta))
    if spec["drop"]:
        shutil.rmtree(path / spec["drop"])
    manifest = path.with_name(path.name + ".manifest.json")
    if not spec["manifest"]:
        manifest.unlink(missing_ok=True)


@FUZZ
@given(spec=broken_stores())
def test_broken_stores_through_export(tmp_path, spec):
    work = tmp_path / "case"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    make_store(work / "g.zarr", spec)
    code, err = run(export_main, [str(work / "g.zarr"), "--out", str(work / "g.hdf5"), "--quiet"])
    assert_clear(code, err, str(work / "g.zarr"))
    if code:
        assert not (work / "g.hdf5").exists() and not (work / "g.hdf5.partial").exists()


# ------------------------------------------------------------------ configs
SECTIONS = ["run", "data", "model", "diffusion", "sampling", "device", "optim", "train", "distill",
            "generate", "evaluate", "launch", "bogus"]
values = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True)
                      | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
KEYS = ["dir", "seed", "geometry", "inputs", "store", "global_batch_size", "batch_size", "layout",
        "preset", "steps", "sample_steps", "max_steps", "lr", "betas", "precision", "monitor",
        "zero_stage", "final_steps", "n", "energy_range", "block_size", "classifiers", "train",
        "nodes", "chunk_rows", "x"]


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(SECTIONS),
                           st.dictionaries(st.sampled_from(KEYS), values, max_size=4) | values,
                           max_size=4),
       overrides=st.lists(st.tuples(st.sampled_from(SECTIONS), st.sampled_from(KEYS), values),
                          max_size=3))
def test_random_configs_and_overrides_are_accepted_or_named(tmp_path, doc, overrides):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    sets = [f"{section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
            for section, key, value in overrides]
    try:
        load_config(path, sets)
    except ConfigError as error:
        text = str(error)
        named = [str(path), *SECTIONS, *(s.split("=", 1)[0] for s in sets)]
        assert any(name in text for name in named), text


def test_a_config_error_through_a_command_is_exit_2_and_names_the_key(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": {"global_batch_size": "many"}}))
    for main, extra in ((convert_main, []), (export_main, []), (evaluate_main, [])):
        code, err = run(main, ["--config", str(path), *extra])
        assert code == 2 and "data.global_batch_size" in err and "Traceback" not in err, (main, err)
    assert (REPO / "configs" / "smoke.yaml").is_file()
