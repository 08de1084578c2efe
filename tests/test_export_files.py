"""Multi-file export (data_tools.export --rows-per-file) and inspect --verify of samples and
exports."""

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from data_tools.export import main as export_main
from data_tools.export_files import export_files, file_paths
from data_tools.inspect import main as inspect_main
from data_tools.verify import verify_export, verify_sample
from pipeline.config import StoreLayout
from pipeline.data.run_layout import export_index, sample_blocks_dir, sample_manifest
from pipeline.data.sample_store import SampleStore
from pipeline.data.shower_store import ShowerStore
from pipeline.generation.energies import IncidentEnergies
from pipeline.physics.geometry import load_geometry

N, BLOCK = 300, 64  # 5 blocks, the last one short


def make_sample(path, n: int = N, seed: int = 3):
    """A finished sample written through SampleStore as pipeline.generate writes it (random
    showers)."""
    g = load_geometry("ds2")
    plan = {
        "n": n,
        "seed": seed,
        "block_size": BLOCK,
        "geometry": "ds2",
        "energies": "log-uniform",
        "energy_range_mev": [1000.0, 1e6],
    }
    sample = SampleStore(path, plan, g, StoreLayout(16, 64))
    energies, rng = IncidentEnergies(seed, (1000.0, 1e6), None), np.random.default_rng(seed)
    for b in range(sample.n_blocks):
        a, z = sample.rows(b)
        showers = rng.exponential(1.0, (z - a, *g.shape)).astype(np.float32)
        showers[showers < 1.0] = 0
        sample.write(a, showers, energies(a, z))
        sample.mark_done(
            b,
            {"seconds": 1.0, "started_at": "t", "finished_at": "t", "rank": b % 2, "device": "cpu"},
        )
    assert sample.finalize({}) is not None
    return path


@pytest.fixture
def sample(tmp_path):
    return make_sample(tmp_path / "gen.zarr")


def read_files(index):
    data = json.loads(index.read_text())
    e, s = [], []
    for f in data["files"]:
        with h5py.File(index.with_name(f["name"]), "r") as h:
            e.append(h["incident_energies"][:, 0])
            s.append(h["showers"][:])
    return data, np.concatenate(e), np.concatenate(s)


def test_files_cover_the_sample_once_and_a_rerun_keeps_them(sample, tmp_path):
    out = tmp_path / "out" / "big.hdf5"
    out.parent.mkdir()
    assert export_main([str(sample), "--out", str(out), "--rows-per-file", "128", "--quiet"]) == 0
    index = export_index(out)
    assert index.name == "big.files.json" and not out.exists()
    data, e, s = read_files(index)
    assert [(f["name"], f["start"], f["stop"]) for f in data["files"]] == [
        ("big_1.hdf5", 0, 128),
        ("big_2.hdf5", 128, 256),
        ("big_3.hdf5", 256, 300),
    ]
    store = ShowerStore(sample)
    assert np.array_equal(e, store.energies.astype(np.float32)) and np.array_equal(
        s, store.showers[:].reshape(N, -1)
    )
    assert verify_export(index)["ok"] and verify_sample(sample)["ok"]
    mtimes = [p.stat().st_mtime_ns for p in file_paths(out, 3)]
    assert (
        export_main([str(sample), "--out", str(out), "--rows-per-file", "128", "--quiet"]) == 0
    )  # nothing to do
    assert [p.stat().st_mtime_ns for p in file_paths(out, 3)] == mtimes
    # an export killed in its second file: the index is gone, the first file is kept, the second
    # redone
    index.unlink()
    file_paths(out, 3)[1].unlink()
    file_paths(out, 3)[1].with_name("big_2.hdf5.partial").write_bytes(b"half")
    assert export_files(sample, out, 128, progress=False) == index
    assert file_paths(out, 3)[0].stat().st_mtime_ns == mtimes[0]
    assert verify_export(index)["ok"] and not list(out.parent.glob("*.partial"))


def test_files_in_the_way_and_bad_arguments_are_refused(sample, tmp_path, capsys):
    out = tmp_path / "big.hdf5"
    file_paths(out, 1)[0].write_bytes(b"not an export")
    assert export_main([str(sample), "--out", str(out), "--rows-per-file", "128", "--quiet"]) == 2
    assert (
        "big_1.hdf5: already exists and is not the export of rows 0-128" in capsys.readouterr().err
    )
    assert not export_index(out).exists()
    assert (
        export_main([str(sample), "--out", str(out), "--rows-per-file", "128", "--stop", "10"]) == 2
    )
    assert "--rows-per-file exports the whole sample" in capsys.readouterr().err
    assert (
        export_main([str(sample), "--out", str(tmp_path / "x.h5"), "--rows-per-file", "128"]) == 2
    )
    assert "must end in .hdf5" in capsys.readouterr().err


def test_config_export_rows_per_file(sample, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {geometry: ds2, inputs: [x.hdf5]}\ngenerate: {export_rows_per_file: 100}\n"
    )
    out = tmp_path / "e" / "g.hdf5"
    args = [
        "--config",
        str(cfg),
        "--set",
        f"generate.out={sample}",
        "--set",
        f"generate.export={out}",
        "--quiet",
    ]
    assert export_main(args) == 0
    assert [f["name"] for f in json.loads(export_index(out).read_text())["files"]] == [
        "g_1.hdf5",
        "g_2.hdf5",
        "g_3.hdf5",
    ]


def test_verify_finds_missing_duplicated_and_foreign_blocks(sample, tmp_path, capsys):
    assert inspect_main([str(sample), "--verify"]) == 0
    assert "ok: True" in capsys.readouterr().out
    store = ShowerStore(sample, writable=True)
    dup = tmp_path / "dup.zarr"
    shutil.copytree(sample, dup)
    shutil.copytree(sample_blocks_dir(sample), sample_blocks_dir(dup))
    shutil.copy(sample_manifest(sample), sample_manifest(dup))
    d = ShowerStore(dup, writable=True)
    d.showers[64:128] = store.showers[0:64]  # block 0 written again at block 1's rows
    d.energies_array[64:128] = store.energies_array[0:64]
    report = verify_sample(dup)
    assert not report["ok"] and any(
        "block 1: 64 incident energies differ" in p for p in report["first_problems"]
    )
    assert any("block 1 holds the same showers as block 0" in p for p in report["first_problems"])
    (sample_blocks_dir(sample) / "block_0000002.json").unlink()
    (sample_blocks_dir(sample) / "block_0000009.json").write_text(json.dumps({"rows": [0, 1]}))
    assert inspect_main([str(sample), "--verify", "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["first_problems"]
    assert any(p.startswith("block 2 (rows [128, 192]): no marker") for p in problems)
    assert any("block 9 is not in the plan" in p for p in problems)


def test_verify_export_finds_changed_missing_and_overlapping_files(sample, tmp_path, capsys):
    out = tmp_path / "g.hdf5"
    index = export_files(sample, out, 100, progress=False)
    with h5py.File(file_paths(out, 3)[1], "r+") as f:
        f["showers"][5, 7] += 1.0
    report = verify_export(index)
    assert report["first_problems"] == [
        f"{file_paths(out, 3)[1]}: rows 100-200 differ from the sample's"
    ]
    assert verify_export(index, compare=False)["ok"]
    data = json.loads(index.read_text())
    data["files"][2]["start"] = 150  # an index that says the third file starts early
    index.write_text(json.dumps(data))
    problems = verify_export(index, compare=False)["first_problems"]
    assert any("starts at row 150, expected 200" in p for p in problems)
    os.remove(file_paths(out, 3)[0])
    assert any(
        p.endswith("g_1.hdf5: missing")
        for p in verify_export(index, compare=False)["first_problems"]
    )
    assert inspect_main([str(index), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["missing_files"] == ["g_1.hdf5"]


def test_verify_errors_name_the_path(tmp_path, capsys):
    bad = tmp_path / "x.files.json"
    bad.write_text("{}")
    assert inspect_main([str(bad), "--verify"]) == 2
    assert f"{bad}: not an export index" in capsys.readouterr().err


def test_verify_finds_nan_and_negative_showers(sample):
    store = ShowerStore(sample, writable=True)
    rows = store.showers[70:72]
    rows[0, 3, 2, 1], rows[1, 0, 0, 0] = np.nan, -1.0
    store.showers[70:72] = rows
    report = verify_sample(sample)
    assert report["first_problems"] == ["block 1: 2 showers with NaN, inf or negative energies"]


def test_verify_one_exported_part(sample, tmp_path):
    from data_tools.export import export

    out = export(sample, tmp_path / "part.hdf5", start=64, stop=200, progress=False)
    report = verify_export(out)
    assert report["ok"] and report["n"] == 136 and report["compared_with"] == str(sample)
    with h5py.File(out, "r+") as f:
        f["incident_energies"][3, 0] *= 2
    assert verify_export(out)["first_problems"] == [f"{out}: rows 64-200 differ from the sample's"]
