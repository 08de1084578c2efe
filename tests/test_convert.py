"""Conversion HDF5 -> zarr: bit-identical round trip, attrs, statistics, every bad-input case."""

import json

import h5py
import numpy as np
import pytest

from data_tools.convert import convert
from pipeline.config import StoreLayout
from pipeline.data.calochallenge_hdf5 import InputError
from pipeline.data.shower_store import ShowerStore, StoreError
from pipeline.physics.geometry import load_geometry
from pipeline.physics.shower_stats import block_stats

from conftest import run_module, tree_bytes, write_random_showers

LAYOUT = StoreLayout(chunk_rows=8, shard_rows=32)


def test_round_trip_is_bit_identical_over_several_files(tmp_path):
    e1, s1 = write_random_showers(tmp_path / "a.hdf5", 70, "ds3", seed=1)
    e2, s2 = write_random_showers(tmp_path / "b.hdf5", 45, "ds3", seed=2, dtype="float32")
    out = convert([tmp_path / "a.hdf5", tmp_path / "b.hdf5"], tmp_path / "s.zarr", "ds3", layout=LAYOUT, progress=False)
    store = ShowerStore(out)
    assert store.n == 115 and store.showers.shape == (115, 45, 50, 18) and store.showers.dtype == np.float32
    expected = np.concatenate([s1, s2]).astype(np.float32).reshape(115, 45, 50, 18)
    assert np.array_equal(store.showers[:], expected)
    assert np.array_equal(store.energies, np.concatenate([e1, e2.astype(np.float32)]))  # stored as read, float64
    assert store.chunk_rows == 8 and store.shard_rows == 32
    assert not (out / "_conversion").exists()


@pytest.mark.parametrize("geometry", ["ds2", "ds1-pions"])
def test_other_geometries(tmp_path, geometry):
    _, s = write_random_showers(tmp_path / "in.hdf5", 40, geometry, seed=3)
    store = ShowerStore(convert([tmp_path / "in.hdf5"], tmp_path / "s.zarr", geometry, layout=LAYOUT, progress=False))
    g = load_geometry(geometry)
    assert store.showers.shape == (40, *g.shape)
    assert np.array_equal(store.showers[:].reshape(40, -1), s.astype(np.float32))


def test_attrs_describe_sources_split_and_stats(tmp_path, small_ds3):
    path, energies, showers = small_ds3
    store = ShowerStore(convert([path], tmp_path / "s.zarr", "ds3", layout=LAYOUT, validation_fraction=0.25,
                                progress=False))
    a = store.attrs
    assert a["format"] == "calo-shower-store" and a["complete"] is True and a["units"]["showers"] == "MeV"
    assert a["geometry"]["name"] == "ds3" and a["geometry"]["shape"] == [45, 50, 18]
    import hashlib
    src = a["sources"][0]
    assert src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and src["size_bytes"] == path.stat().st_size
    val, train = store.chunk_ids("validation"), store.chunk_ids("train")
    assert len(val) == 3 and sorted(val + train) == list(range(13))  # 100 rows / 8 = 13 chunks
    # statistics equal a direct computation over the training chunks
    rows = np.concatenate([np.arange(*store.chunk_range(c)) for c in train])
    g = load_geometry("ds3")
    direct = block_stats(energies[rows], showers[rows].astype(np.float32).reshape(-1, *g.shape), g)
    for key, moments in direct.items():
        np.testing.assert_allclose(a["stats"][key]["mean"], moments.mean, rtol=1e-9, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(a["stats"][key]["std"], moments.std, rtol=1e-6, atol=1e-9, err_msg=key)
        assert a["stats"][key]["count"] == moments.count


def test_rerun_of_complete_store_is_a_no_op_and_other_inputs_are_refused(tmp_path, small_ds3):
    path = small_ds3[0]
    out = convert([path], tmp_path / "s.zarr", "ds3", layout=LAYOUT, progress=False)
    before = tree_bytes(out)
    convert([path], out, "ds3", layout=LAYOUT, progress=False)
    assert tree_bytes(out) == before
    other = tmp_path / "other.hdf5"
    write_random_showers(other, 50, "ds3", seed=9)
    with pytest.raises(StoreError, match="different inputs or settings.*--overwrite"):
        convert([other], out, "ds3", layout=LAYOUT, progress=False)
    with pytest.raises(StoreError, match="different inputs or settings"):
        convert([path], out, "ds3", layout=StoreLayout(chunk_rows=16, shard_rows=32), progress=False)
    assert tree_bytes(out) == before
    convert([other], out, "ds3", layout=LAYOUT, overwrite=True, progress=False)
    assert ShowerStore(out).n == 50


def test_refuses_to_overwrite_something_that_is_not_a_store(tmp_path, small_ds3):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("do not delete")
    with pytest.raises(StoreError, match="not a zarr store; refusing"):
        convert([small_ds3[0]], target, "ds3", layout=LAYOUT, overwrite=True, progress=False)
    assert (target / "thesis.tex").exists()


def _h5(path, energies, showers):
    with h5py.File(path, "w") as f:
        if energies is not None:
            f["incident_energies"] = energies
        if showers is not None:
            f["showers"] = showers


GOOD_E = np.full((4, 1), 1000.0)
GOOD_S = np.zeros((4, 40500))


@pytest.mark.parametrize("energies,showers,message", [
    (None, GOOD_S, "missing dataset 'incident_energies'"),
    (GOOD_E, None, "missing dataset 'showers'"),
    (GOOD_E, np.zeros((4, 6480)), "has 6480 voxels per shower, but geometry 'ds3' has 40500"),
    (np.full((3, 1), 1e3), GOOD_S, "'incident_energies' has 3 rows but 'showers' has 4"),
    (np.full((4, 2), 1e3), GOOD_S, "'incident_energies' has shape (4, 2), expected (N, 1)"),
    (np.array([[1e3], [np.nan], [1e3], [1e3]]), GOOD_S, r"incident_energies\[1\] = nan"),
    (np.array([[1e3], [1e3], [-5.0], [1e3]]), GOOD_S, r"incident_energies\[2\] = -5.0"),
    (GOOD_E, np.where(np.arange(40500) == 7, np.nan, 0.0)[None].repeat(4, 0), r"showers\[0, 7\] = nan"),
    (GOOD_E, np.where(np.arange(40500) == 9, np.inf, 0.0)[None].repeat(4, 0), r"showers\[0, 9\] = inf"),
    (GOOD_E, np.where(np.arange(40500) == 3, -1.0, 0.0)[None].repeat(4, 0), r"showers\[0, 3\] = -1.0"),
    (GOOD_E, np.full((4, 40500), 1e300), "fit in float32"),
    (GOOD_E, np.zeros((4, 40500), dtype=np.int32), "expected floating point"),
])
def test_bad_input_is_a_clear_error_and_never_complete(tmp_path, energies, showers, message):
    bad = tmp_path / "bad.hdf5"
    _h5(bad, energies, showers)
    out = tmp_path / "s.zarr"
    with pytest.raises(InputError) as err:
        convert([bad], out, "ds3", layout=LAYOUT, progress=False)
    assert str(bad) in str(err.value)
    assert message in str(err.value) or __import__("re").search(message, str(err.value))
    if out.exists():
        with pytest.raises(StoreError, match="incomplete"):
            ShowerStore(out)


def test_missing_truncated_and_non_hdf5_files(tmp_path, small_ds3):
    with pytest.raises(InputError, match="no-such.hdf5: no such file"):
        convert([tmp_path / "no-such.hdf5"], tmp_path / "s.zarr", "ds3", progress=False)
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5 at all")
    with pytest.raises(InputError, match="junk.hdf5: not a readable HDF5 file"):
        convert([junk], tmp_path / "s.zarr", "ds3", progress=False)
    truncated = tmp_path / "truncated.hdf5"
    data = small_ds3[0].read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="truncated.hdf5"):
        convert([truncated], tmp_path / "t.zarr", "ds3", layout=LAYOUT, progress=False)
    if (tmp_path / "t.zarr").exists():
        with pytest.raises(StoreError, match="incomplete"):
            ShowerStore(tmp_path / "t.zarr")


def test_cli_success_and_error(tmp_path, small_ds3):
    ok = run_module("data_tools.convert", str(small_ds3[0]), "--geometry", "ds3", "--out", str(tmp_path / "s.zarr"),
                    "--chunk-rows", "8", "--shard-rows", "32", "--quiet")
    assert ok.returncode == 0, ok.stderr
    bad = run_module("data_tools.convert", str(tmp_path / "nope.hdf5"), "--geometry", "ds3", "--out", str(tmp_path / "x.zarr"))
    assert bad.returncode == 2 and "nope.hdf5: no such file" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_module("data_tools.convert", str(small_ds3[0]), "--geometry", "ds2", "--out", str(tmp_path / "y.zarr"))
    assert bad.returncode == 2 and "40500 voxels per shower, but geometry 'ds2' has 6480" in bad.stderr
    layout = run_module("data_tools.convert", str(small_ds3[0]), "--geometry", "ds3", "--out", str(tmp_path / "z.zarr"),
                        "--chunk-rows", "8", "--shard-rows", "12")
    assert layout.returncode == 2 and "shard_rows: must be a positive multiple of chunk_rows" in layout.stderr


def _config(tmp_path, standin: bool = True) -> str:
    data = {"geometry": "ds2", "inputs": [str(tmp_path / "inputs" / "standin_ds2.hdf5")], "store": str(tmp_path / "s.zarr"),
            "layout": {"chunk_rows": 8, "shard_rows": 32}, "validation_fraction": 0.25, "split_seed": 3}
    if standin:
        data["standin"] = {"n": 2048, "seed": 5, "workers": 1}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({"run": {"dir": str(tmp_path / "run")}, "data": data}))  # JSON is YAML
    return str(path)


def test_config_mode_simulates_the_standin_converts_and_skips_a_rerun(tmp_path, capsys):
    from data_tools.convert import main

    cfg = _config(tmp_path)
    assert main(["--config", cfg, "--set", "data.standin.n=40", "--quiet"]) == 0
    source = tmp_path / "inputs" / "standin_ds2.hdf5"
    assert source.is_file() and [p.name for p in source.parent.iterdir()] == [source.name]  # no temporary left
    store = ShowerStore(tmp_path / "s.zarr")
    assert store.n == 40 and store.geometry.name == "ds2" and (store.chunk_rows, store.shard_rows) == (8, 32)
    assert store.attrs["split"]["validation_fraction"] == 0.25 and store.attrs["split"]["seed"] == 3
    with h5py.File(source, "r") as f:
        assert np.array_equal(store.showers[:].reshape(40, -1), f["showers"][:].astype(np.float32))
    before, mtime = tree_bytes(tmp_path / "s.zarr"), source.stat().st_mtime_ns
    assert main(["--config", cfg, "--set", "data.standin.n=40"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert tree_bytes(tmp_path / "s.zarr") == before and source.stat().st_mtime_ns == mtime
    # explicit options override the config's values: another layout is another store
    assert main(["--config", cfg, "--chunk-rows", "16", "--quiet"]) == 2
    assert "different inputs or settings" in capsys.readouterr().err
    # explicit inputs and --out override data.inputs and data.store (no stand-in involved)
    other = tmp_path / "other.hdf5"
    write_random_showers(other, 20, "ds2", seed=8)
    assert main([str(other), "--config", cfg, "--out", str(tmp_path / "o.zarr"), "--quiet"]) == 0
    assert ShowerStore(tmp_path / "o.zarr").n == 20


def test_config_mode_missing_input_without_standin_is_an_error(tmp_path, capsys):
    from data_tools.convert import main

    assert main(["--config", _config(tmp_path, standin=False), "--quiet"]) == 2
    err = capsys.readouterr().err
    missing = tmp_path / "inputs" / "standin_ds2.hdf5"
    assert err.startswith("convert: error: data.inputs: ")
    assert f"{missing} does not exist (and data.standin is not set to simulate it)" in err
    assert not (tmp_path / "s.zarr").exists() and not missing.parent.exists()


def test_config_mode_also_simulates_the_standin_reference(tmp_path, capsys):
    """convert is the chain's first stage: it prepares every stand-in file the later stages read."""
    from data_tools.convert import main

    reference = tmp_path / "ref" / "reference_ds2.hdf5"
    sets = ["--set", "data.standin.n=40", "--set", f"evaluate.reference={reference}",
            "--set", "evaluate.reference_standin={n: 24, seed: 9, workers: 1}"]
    assert main(["--config", _config(tmp_path), *sets, "--quiet"]) == 0
    with h5py.File(reference, "r") as f:
        assert f["showers"].shape == (24, 6480)
    assert ShowerStore(tmp_path / "s.zarr").n == 40  # the reference is not converted into the training store
    mtime = reference.stat().st_mtime_ns
    assert main(["--config", _config(tmp_path), *sets, "--quiet"]) == 0
    assert reference.stat().st_mtime_ns == mtime


def test_cli_without_config_needs_inputs_geometry_and_out(tmp_path):
    from data_tools.convert import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--geometry", "ds2", "--out", str(tmp_path / "x.zarr")])
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path / "a.hdf5"), "--out", str(tmp_path / "x.zarr")])
    args = parse_args([str(tmp_path / "a.hdf5"), "--geometry", "ds2", "--out", str(tmp_path / "x.zarr")])
    assert args.config is None and args.chunk_rows is None


def test_ensure_standin(tmp_path):
    from data_tools.standin import ensure_standin
    from pipeline.config import StandinConfig

    existing = tmp_path / "there.hdf5"
    existing.write_bytes(b"untouched")
    assert ensure_standin(existing, None, "ds2", "data.inputs") == existing and existing.read_bytes() == b"untouched"
    with pytest.raises(InputError, match=r"evaluate.reference: .*ref.hdf5 does not exist \(and evaluate.reference_standin"):
        ensure_standin(tmp_path / "ref.hdf5", None, "ds2", "evaluate.reference")
    with pytest.raises(InputError, match="simulated as a CaloChallenge HDF5 file"):
        ensure_standin(tmp_path / "ref.zarr", StandinConfig(n=4), "ds2", "evaluate.reference")
    with pytest.raises(InputError, match="cannot simulate stand-in"):
        ensure_standin(tmp_path / "ds1.hdf5", StandinConfig(n=4), "ds1-pions", "data.inputs", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.hdf5"]


@pytest.mark.slow
@pytest.mark.mpi
def test_config_mode_under_mpi_simulates_once_on_rank_0(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, find_mpirun

    mpirun = find_mpirun()
    if mpirun is None:
        pytest.skip("no mpirun on PATH or beside the interpreter (pip install mpich mpi4py)")
    pytest.importorskip("mpi4py")
    proc = subprocess.run([mpirun, "-n", "2", sys.executable, "-m", "data_tools.convert", "--config", _config(tmp_path),
                           "--set", "data.standin.n=70"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("[standin] simulating") == 1
    assert ShowerStore(tmp_path / "s.zarr").n == 70


def test_a_conversion_killed_while_creating_its_store_resumes(tmp_path, monkeypatch):
    """Found by benchmarks/fault_soak.py: a kill between creating the zarr group and writing its attrs used to
    leave a store that the re-run refused as one "from different inputs or settings"."""
    import zarr

    import data_tools.convert as convert_mod

    source = tmp_path / "in.hdf5"
    write_random_showers(source, 20, "ds2", seed=2)
    real = convert_mod.create_arrays

    def killed(path, *args, **kwargs):  # the group exists, its arrays and attrs do not yet
        zarr.open_group(str(path), mode="w", zarr_format=3)
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_mod, "create_arrays", killed)
    with pytest.raises(KeyboardInterrupt):
        convert([source], tmp_path / "s.zarr", "ds2", layout=StoreLayout(8, 16), progress=False)
    monkeypatch.setattr(convert_mod, "create_arrays", real)
    assert ShowerStore(convert([source], tmp_path / "s.zarr", "ds2", layout=StoreLayout(8, 16), progress=False)).n == 20
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".creating")] == []
