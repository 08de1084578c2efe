"""End to end: ``python -m pipeline.evaluate`` on an HDF5 file against a zarr store, and its errors."""

import json

import pytest

from conftest import run_module, write_random_showers
from data_tools.convert import convert
from data_tools.simulate import simulate_file
from pipeline.cli import COMMANDS
from pipeline.evaluate import main
from pipeline.store import StoreLayout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--classifier-max", "300", "--classifier-epochs", "2", "--fpd-batches", "2", "--kpd-batch", "100",
        "--threads", "1", "--quiet"]


def _strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_evaluate_hdf5_against_zarr(tmp_path, capsys):
    gen = simulate_file(tmp_path / "gen.hdf5", "ds2", 400, seed=2)
    ref_h5 = simulate_file(tmp_path / "ref.hdf5", "ds2", 500, seed=1)
    ref = convert([ref_h5], tmp_path / "ref.zarr", "ds2", layout=StoreLayout(16, 64), progress=False)
    out = tmp_path / "eval"
    assert main(["--generated", str(gen), "--reference", str(ref), "--geometry", "ds2", "--out", str(out), *FAST]) == 0
    assert "AUC low" in capsys.readouterr().out
    report = _strict((out / "report.json").read_text())
    assert report["inputs"]["generated"]["n"] == 400 and report["inputs"]["reference"]["kind"] == "zarr shower store"
    assert set(report["classifier"]) == {"low", "high"}
    low = report["classifier"]["low"]
    assert low["memory"]["showers_per_sample"] == 300 and low["n_features"] == 6481
    assert low["runs"][0]["n_test"] == 120 and 0 <= low["auc"] <= 1
    summary = report["separation_power"]["summary"]
    assert set(summary) >= {"etot_einc", "voxel", "e_layer", "ec_x", "ec_y", "width_x", "width_y", "sparsity"}
    assert len(report["separation_power"]["observables"]) == 1 + 6 * 45 + 1
    assert [b["label"] for b in report["energy_bins"]] == ["1-10 GeV", "10-100 GeV", "100-1000 GeV"]
    assert "separation_power" in report["energy_bins"][0]
    assert report["physics_distance"]["fpd"]["value"] >= 0 and "error" in report["physics_distance"]["kpd"]
    md = (out / "report.md").read_text()
    assert "## Headline metrics" in md and "CaloDREAM" in md and "## Incident-energy bins" in md
    assert len(report["plots"]) == 11
    for name in report["plots"]:
        assert (out / name).stat().st_size > 5000 and f"]({name})" in md


def test_evaluate_cli_errors(tmp_path):
    a, b = tmp_path / "gen_ds3.hdf5", tmp_path / "ref_ds2.hdf5"
    write_random_showers(a, 6, "ds3")
    write_random_showers(b, 6, "ds2")
    proc = run_module("pipeline.evaluate", "--generated", str(a), "--reference", str(b), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "gen_ds3.hdf5" in proc.stderr and "ref_ds2.hdf5" in proc.stderr and "geometry" in proc.stderr
    assert main(["--generated", str(a), "--reference", str(tmp_path / "nope.hdf5"), "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(SystemExit):
        main(["--generated", str(a), "--reference", str(a), "--out", str(tmp_path / "o"), "--classifiers", "cnn"])
    assert COMMANDS["evaluate"] == "pipeline.evaluate"
