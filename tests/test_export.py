"""Export zarr sample -> CaloChallenge HDF5: exact round trip, parts, streaming, errors, --config mode."""

import json
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from data_tools import export_file as export_mod
from data_tools.convert import convert
from data_tools.export import export, main
from pipeline.config import StoreLayout
from pipeline.data.calochallenge_hdf5 import inspect_file
from pipeline.data.run_layout import sample_manifest
from pipeline.data.shower_store import FORMAT_NAME, FORMAT_VERSION, StoreError, create_arrays
from pipeline.physics.geometry import load_geometry
from pipeline.tools.cli import COMMANDS

from conftest import make_generated, run_module, write_random_showers

LAYOUT = StoreLayout(chunk_rows=8, shard_rows=32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted ds3 store of 70 random showers (shards of 32, 32, 6) and its source arrays."""
    tmp = tmp_path_factory.mktemp("export")
    e, s = write_random_showers(tmp / "in.hdf5", 70, "ds3", seed=4)
    store = convert([tmp / "in.hdf5"], tmp / "in.zarr", "ds3", layout=LAYOUT, progress=False)
    return store, e, s


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["incident_energies"][:], f["showers"][:]


def test_round_trip_float32_is_bit_exact_and_in_calochallenge_format(converted, tmp_path):
    store, e, s = converted
    out = export(store, tmp_path / "out.hdf5", progress=False, workers=2)
    with h5py.File(out, "r") as f:
        for key, shape in (("incident_energies", (70, 1)), ("showers", (70, 40500))):
            assert f[key].shape == shape and f[key].dtype == np.float32
            assert f[key].compression == "gzip", key
        assert f["showers"].chunks[1] == 40500 and 32 % f["showers"].chunks[0] == 0
        assert f.attrs["exporter"] == "data_tools.export" and f.attrs["start"] == 0 and f.attrs["stop"] == 70
    energies, showers = read_h5(out)
    assert np.array_equal(showers, s.astype(np.float32))
    assert np.array_equal(energies[:, 0], e.astype(np.float32))
    info = inspect_file(out, load_geometry("ds3"))
    assert info.n == 70 and info.n_voxels == 40500 and info.dtype == "float32"
    assert not (tmp_path / "out.hdf5.partial").exists()


def test_float64_equals_float32_values_cast(converted, tmp_path):
    store, e, s = converted
    out = export(store, tmp_path / "out64.hdf5", dtype="float64", progress=False)
    energies, showers = read_h5(out)
    assert showers.dtype == np.float64 and energies.dtype == np.float64
    assert np.array_equal(showers, s.astype(np.float32).astype(np.float64))
    assert np.array_equal(energies[:, 0], e)  # the store keeps the energies as read (float64)


@pytest.mark.parametrize("start,stop", [(10, 45), (32, 64), (69, 70), (5, None)])
def test_a_part_via_the_cli(converted, tmp_path, capsys, start, stop):
    store, e, s = converted
    out = tmp_path / "part.hdf5"
    argv = [str(store), "--out", str(out), "--start", str(start), "--workers", "1", "--quiet"]
    argv += ["--stop", str(stop)] if stop is not None else []
    assert main(argv) == 0, capsys.readouterr().err
    stop = 70 if stop is None else stop
    energies, showers = read_h5(out)
    assert showers.shape == (stop - start, 40500)
    assert np.array_equal(showers, s[start:stop].astype(np.float32))
    assert np.array_equal(energies[:, 0], e[start:stop].astype(np.float32))


def test_reads_are_blockwise(converted, tmp_path, monkeypatch):
    store = converted[0]
    calls = []
    real = export_mod.read_block

    def spy(s, a, b):
        calls.append((a, b))
        return real(s, a, b)

    monkeypatch.setattr(export_mod, "read_block", spy)
    export(store, tmp_path / "a.hdf5", progress=False)
    assert calls == [(0, 32), (32, 64), (64, 70)]  # one shard at a time
    calls.clear()
    export(store, tmp_path / "b.hdf5", start=3, stop=68, progress=False)
    assert calls == [(3, 35), (35, 67), (67, 68)]


def test_memory_is_bounded_by_a_block(tmp_path):
    """A 40 MB (float32) sample exports with a traced peak of a few shards (1.7 MB each)."""
    g = load_geometry("ds2")
    n, layout = 1536, StoreLayout(chunk_rows=16, shard_rows=64)
    group = create_arrays(tmp_path / "big.zarr", g, n, layout,
                          {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "geometry": g.to_dict(),
                           "split": {"validation_chunks": []}, "generation": {"seed": 0}})
    rng = np.random.default_rng(0)
    for a in range(0, n, layout.shard_rows):
        block = np.zeros((layout.shard_rows, g.n_voxels), np.float32)
        block[:, rng.integers(0, g.n_voxels, 50)] = rng.random((layout.shard_rows, 50), dtype=np.float32)
        group["showers"][a:a + layout.shard_rows] = block.reshape(-1, *g.shape)
    group["incident_energies"][:] = 10 ** rng.uniform(3, 6, n)
    group.attrs.update({"complete": True})
    sample_manifest(tmp_path / "big.zarr").write_text("{}")
    whole = n * g.n_voxels * 4
    tracemalloc.start()
    try:
        export(tmp_path / "big.zarr", tmp_path / "big.hdf5", progress=False, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < whole / 4, f"peak {peak / 2**20:.1f} MiB for a {whole / 2**20:.1f} MiB sample"
    with h5py.File(tmp_path / "big.hdf5", "r") as f:
        assert f["showers"].shape == (n, g.n_voxels)
        assert np.array_equal(f["showers"][-64:], zarr.open_group(str(tmp_path / "big.zarr"), mode="r")["showers"][-64:].reshape(64, -1))


def test_generated_sample_exports_and_incomplete_one_says_rerun_generate(tmp_path, capsys):
    sample = tmp_path / "generated.zarr"
    e, s = make_generated(sample, n=40)
    assert main([str(sample), "--out", str(tmp_path / "g.hdf5"), "--quiet", "--workers", "1"]) == 0
    energies, showers = read_h5(tmp_path / "g.hdf5")
    assert np.array_equal(showers, s) and np.array_equal(energies[:, 0], e.astype(np.float32))
    inspect_file(tmp_path / "g.hdf5", load_geometry("ds2"))
    partial = tmp_path / "partial.zarr"
    make_generated(partial, n=40, complete=False)
    assert main([str(partial), "--out", str(tmp_path / "p.hdf5"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export: error: ") and str(partial) in err
    assert "re-run the same pipeline.generate command" in err and "data_tools.convert" not in err
    assert not (tmp_path / "p.hdf5").exists() and not (tmp_path / "p.hdf5.partial").exists()
    # marked complete but killed before its manifest (pipeline.generate's last write): still unfinished
    zarr.open_group(str(partial), mode="r+").attrs.update({"complete": True})
    assert main([str(partial), "--out", str(tmp_path / "p.hdf5"), "--quiet"]) == 2
    assert "re-run the same pipeline.generate command" in capsys.readouterr().err


def _error(capsys, argv: list[str]) -> str:
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export: error: ") and "Traceback" not in err
    return err


def test_input_errors_name_the_path(converted, tmp_path, capsys):
    out = str(tmp_path / "o.hdf5")
    missing = tmp_path / "nope.zarr"
    assert f"{missing}: no such zarr store" in _error(capsys, [str(missing), "--out", out])
    h5 = tmp_path / "file.hdf5"
    write_random_showers(h5, 3, "ds2")
    assert f"{h5}: is a file, not a zarr store" in _error(capsys, [str(h5), "--out", out])
    plain = tmp_path / "dir"
    plain.mkdir()
    assert f"{plain}: not a zarr store" in _error(capsys, [str(plain), "--out", out])
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w", zarr_format=3).attrs.update({"format": "something-else"})
    assert f"{other}: attrs.format is 'something-else'" in _error(capsys, [str(other), "--out", out])
    incomplete = tmp_path / "incomplete.zarr"
    g = load_geometry("ds2")
    create_arrays(incomplete, g, 8, StoreLayout(8, 8), {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                                         "geometry": g.to_dict()})
    err = _error(capsys, [str(incomplete), "--out", out])
    assert f"{incomplete}: store is incomplete" in err and "data_tools.convert" in err
    assert not Path(out).exists() and not Path(out + ".partial").exists()


@pytest.mark.parametrize("args,message", [
    (["--start", "70"], "--start 70 is out of range (the sample has 70 showers"),
    (["--start", "-1"], "--start -1 is out of range"),
    (["--stop", "71"], "--stop 71 is out of range (must be in 1..70"),
    (["--start", "20", "--stop", "20"], "--stop 20 is out of range (must be in 21..70 for --start 20)"),
])
def test_range_errors(converted, tmp_path, capsys, args, message):
    err = _error(capsys, [str(converted[0]), "--out", str(tmp_path / "o.hdf5"), *args])
    assert str(converted[0]) in err and message in err
    assert list(tmp_path.iterdir()) == []


def test_output_errors_overwrite_and_failure_leaves_nothing(converted, tmp_path, capsys, monkeypatch):
    store = converted[0]
    nodir = tmp_path / "no" / "such" / "o.hdf5"
    assert f"{nodir}: output directory {nodir.parent} does not exist" in _error(capsys, [str(store), "--out", str(nodir)])
    out = tmp_path / "o.hdf5"
    out.write_bytes(b"precious")
    assert f"{out}: already exists; pass --overwrite" in _error(capsys, [str(store), "--out", str(out)])
    assert out.read_bytes() == b"precious"
    # a failure in the middle of an export leaves neither the output nor the .partial, and keeps the old file
    real, calls = export_mod.read_block, []

    def failing(s, a, b):
        calls.append(a)
        if len(calls) == 2:
            raise StoreError(f"{s.path}: cannot read rows {a}-{b}: simulated damage")
        return real(s, a, b)

    monkeypatch.setattr(export_mod, "read_block", failing)
    assert "simulated damage" in _error(capsys, [str(store), "--out", str(out), "--overwrite"])
    assert out.read_bytes() == b"precious" and not (tmp_path / "o.hdf5.partial").exists()
    calls.clear()
    fresh = tmp_path / "fresh.hdf5"
    assert "simulated damage" in _error(capsys, [str(store), "--out", str(fresh)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.hdf5"]
    monkeypatch.setattr(export_mod, "read_block", real)
    assert main([str(store), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert read_h5(out)[1].shape == (70, 40500)


def _config(tmp_path: Path, **generate) -> Path:
    cfg = {"run": {"dir": str(tmp_path / "run")}, "data": {"inputs": [str(tmp_path / "in.hdf5")], "geometry": "ds2"},
           "generate": generate}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def test_config_mode_paths_dtype_and_idempotence(tmp_path, capsys):
    sample = tmp_path / "run" / "samples" / "generated.zarr"
    sample.parent.mkdir(parents=True)
    e, s = make_generated(sample, n=24)
    cfg = str(_config(tmp_path))
    assert main(["--config", cfg, "--workers", "1"]) == 0
    out = tmp_path / "run" / "samples" / "generated.hdf5"  # run_layout.export_path
    assert np.array_equal(read_h5(out)[1], s) and read_h5(out)[1].dtype == np.float32
    capsys.readouterr()
    before = out.stat().st_mtime_ns
    assert main(["--config", cfg]) == 0  # same sample: skipped
    assert "already an export of" in capsys.readouterr().out and out.stat().st_mtime_ns == before
    # another dtype (or a regenerated sample) is not silently kept
    err = _error(capsys, ["--config", cfg, "--set", "generate.export_dtype=float64"])
    assert f"{out}: already exists and is not an export of the current" in err
    assert main(["--config", cfg, "--set", "generate.export_dtype=float64", "--overwrite", "--quiet"]) == 0
    assert read_h5(out)[1].dtype == np.float64
    # generate.out / generate.export move both paths (the export's directory is created)
    other = tmp_path / "elsewhere" / "s.zarr"
    other.parent.mkdir()
    make_generated(other, n=16, seed=3)
    target = tmp_path / "exports" / "x.hdf5"
    assert main(["--config", cfg, "--set", f"generate.out={other}", "--set", f"generate.export={target}", "--quiet"]) == 0
    assert read_h5(target)[1].shape == (16, 6480)
    # positional SAMPLE and --out override the config
    explicit = tmp_path / "explicit.hdf5"
    assert main([str(other), "--config", cfg, "--out", str(explicit), "--stop", "4", "--quiet"]) == 0
    assert read_h5(explicit)[1].shape == (4, 6480)
    # a missing sample names the configured path
    err = _error(capsys, ["--config", cfg, "--set", f"generate.out={tmp_path / 'none.zarr'}"])
    assert f"{tmp_path / 'none.zarr'}: no such zarr store" in err


def test_cli_subprocess_and_command_table(converted, tmp_path):
    assert COMMANDS["export"] == "data_tools.export"
    ok = run_module("data_tools.export", str(converted[0]), "--out", str(tmp_path / "o.hdf5"), "--stop", "5",
                    "--workers", "1")
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and read_h5(tmp_path / "o.hdf5")[1].shape == (5, 40500)
    bad = run_module("data_tools.export", str(tmp_path / "x.zarr"), "--out", str(tmp_path / "p.hdf5"))
    assert bad.returncode == 2 and "export: error:" in bad.stderr and "Traceback" not in bad.stderr
    usage = run_module("data_tools.export", str(converted[0]))
    assert usage.returncode == 2 and "give SAMPLE and --out, or --config" in usage.stderr


def test_rerunning_a_finished_export_is_a_no_op(converted, tmp_path, capsys):
    """A kill between the final rename and the exit leaves a finished export: the same command then succeeds."""
    store, out = converted[0], tmp_path / "again.hdf5"
    assert main([str(store), "--out", str(out), "--quiet"]) == 0
    before = out.stat().st_mtime_ns
    assert main([str(store), "--out", str(out)]) == 0
    assert "is already an export of" in capsys.readouterr().out and out.stat().st_mtime_ns == before
    assert "already exists; pass --overwrite" in _error(capsys, [str(store), "--out", str(out), "--stop", "5"])
