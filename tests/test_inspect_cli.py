import json

from data_tools.convert import convert
from data_tools.inspect import summarize
from pipeline.config import StoreLayout
from pipeline.tools.cli import main as calo_main

from conftest import run_module


def test_inspect_hdf5_and_store(tmp_path, small_ds3):
    path = small_ds3[0]
    h = summarize(path)
    assert h["n"] == 100 and h["geometry"] == "ds3" and 0.85 < h["zero_fraction"] < 0.91
    out = convert([path], tmp_path / "s.zarr", "ds3", layout=StoreLayout(8, 32), progress=False)
    s = summarize(out)
    assert s["complete"] is True and s["n"] == 100 and s["shape"] == [100, 45, 50, 18]
    assert s["compression_ratio"] > 1 and s["chunks"]["train"] + s["chunks"]["validation"] == 13
    assert s["incident_energy_train"]["min_mev"] >= 1000
    proc = run_module("data_tools.inspect", str(out), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["n"] == 100


def test_inspect_reports_incomplete_store(tmp_path, small_ds3):
    out = convert([small_ds3[0]], tmp_path / "s.zarr", "ds3", layout=StoreLayout(8, 32), progress=False)
    from pipeline.data.shower_store import ShowerStore
    ShowerStore(out, writable=True).group.attrs["complete"] = False
    (out / "_conversion").mkdir()
    s = summarize(out)
    assert s["complete"] is False and s["shards_done"] == "0/4"


def test_inspect_errors(tmp_path):
    proc = run_module("data_tools.inspect", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "neither an HDF5 file nor a zarr store" in proc.stderr


def test_console_script_dispatch(capsys, tmp_path, small_ds3):
    assert calo_main(["--help"]) == 0
    assert "convert" in capsys.readouterr().out
    assert calo_main(["bogus"]) == 2
    assert calo_main(["inspect", str(small_ds3[0])]) == 0
    assert "CaloChallenge HDF5" in capsys.readouterr().out


def test_inspect_a_generated_sample_while_generating_and_when_complete(tmp_path):
    """A ``pipeline.generate`` sample has no training statistics: its energy range, blocks and
    timing are shown instead (it used to fail with KeyError: 'stats')."""
    from test_sample_store import fill, open_sample

    sample = open_sample(tmp_path / "gen.zarr")
    s = summarize(tmp_path / "gen.zarr")
    assert s["kind"] == "generated sample (zarr)" and s["complete"] is False
    assert s["blocks_done"] == 0
    fill(sample)
    assert summarize(tmp_path / "gen.zarr")["blocks_done"] == 3
    sample.finalize({})
    proc = run_module("data_tools.inspect", str(tmp_path / "gen.zarr"), "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["complete"] is True and s["n"] == 48
    assert s["incident_energy"] == {"min_mev": 1e4, "max_mev": 1e4}
    assert s["ms_per_shower_per_rank"] > 0 and s["zero_fraction_sampled"] == 0.0
