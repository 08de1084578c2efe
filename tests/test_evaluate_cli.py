"""End to end: ``python -m pipeline.evaluate`` on an HDF5 file against a zarr store, and its errors."""

import json

import pytest

from data_tools.convert import convert
from data_tools.simulate import simulate_file
from data_tools.standin import ensure_standin
from pipeline.config import StoreLayout, load_config
from pipeline.evaluation.command import main
from pipeline.tools.cli import COMMANDS

from conftest import run_module, write_random_showers

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
    assert low["protocol"] == "calochallenge" and low["config"]["dropout"] == 0 and low["runs"][0]["epochs"] == 2
    assert "**Protocol: CaloChallenge**" in md and "Deviations:" in md and "quick" not in md
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


def _config(tmp_path, **evaluate) -> str:
    cfg = {"run": {"dir": str(tmp_path / "run")}, "data": {"geometry": "ds2", "inputs": [str(tmp_path / "in.hdf5")]},
           "evaluate": {"reference": str(tmp_path / "ref" / "reference_ds2.hdf5"),
                        "reference_standin": {"n": 300, "seed": 1, "workers": 1},
                        "classifiers": "high", "classifier_protocol": "quick", "classifier_epochs": 2,
                        "extra_args": ["--no-plots", "--no-physics-distances", "--threads", "1", "--quiet"], **evaluate}}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return str(path)


def test_config_mode_paths_standin_reference_overrides_and_skip(tmp_path, capsys):
    samples = tmp_path / "run" / "samples"
    samples.mkdir(parents=True)
    export = simulate_file(samples / "generated.hdf5", "ds2", 250, seed=2)  # run_layout.export_path
    cfg = _config(tmp_path)
    # the stand-in reference is simulated by the chain's first stage (convert --config) or the demo, not here
    assert main(["--config", cfg]) == 2
    assert "stand-in reference (evaluate.reference_standin), simulated by the convert stage" in capsys.readouterr().err
    loaded = load_config(cfg)
    ensure_standin(loaded.evaluate.reference, loaded.evaluate.reference_standin, "ds2", "evaluate.reference")
    assert main(["--config", cfg]) == 0
    out = tmp_path / "run" / "evaluation"  # run_layout.evaluation_dir
    report = _strict((out / "report.json").read_text())
    assert (tmp_path / "ref" / "reference_ds2.hdf5").is_file()
    assert report["inputs"]["generated"]["path"] == str(export) and report["inputs"]["reference"]["n"] == 300
    assert report["geometry"] == "ds2" and set(report["classifier"]) == {"high"}
    assert report["settings"]["classifier"]["max_epochs"] == 2 and "physics_distance" not in report
    assert report["classifier"]["high"]["protocol"] == "quick" and "**Protocol: quick**" in (out / "report.md").read_text()
    assert "plots" not in report and (out / "report.md").is_file() and not (out / "report.json.tmp").exists()
    capsys.readouterr()
    # finished: a re-run is skipped
    before = (out / "report.json").stat().st_mtime_ns
    assert main(["--config", cfg]) == 0
    assert "exists: this evaluation is finished" in capsys.readouterr().out
    assert (out / "report.json").stat().st_mtime_ns == before
    # --overwrite runs again; command-line options override the config's
    assert main(["--config", cfg, "--overwrite", "--classifiers", "none", "--bins", "20"]) == 0
    report = _strict((out / "report.json").read_text())
    assert report["classifier"] == {} and report["settings"]["bins"] == 20
    # --set moves the output; without an export the zarr sample (generate.out) is evaluated
    export.unlink()
    other = tmp_path / "eval2"
    assert main(["--config", cfg, "--set", f"evaluate.out={other}", "--set", f"generate.out={tmp_path / 'g.zarr'}"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'g.zarr'}" in err and not (other / "report.json").exists()


def test_config_mode_errors(tmp_path, capsys):
    import zarr

    from pipeline.config import StoreLayout
    from pipeline.data.shower_store import FORMAT_NAME, FORMAT_VERSION, create_arrays
    from pipeline.physics.geometry import load_geometry

    g = load_geometry("ds2")
    sample = tmp_path / "run" / "samples" / "generated.zarr"
    sample.parent.mkdir(parents=True)
    create_arrays(sample, g, 16, StoreLayout(8, 16), {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                                      "geometry": g.to_dict(), "generation": {"seed": 0}})
    (tmp_path / "ref").mkdir()
    write_random_showers(tmp_path / "ref" / "reference_ds2.hdf5", 10, "ds2")
    assert main(["--config", _config(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(sample) in err and "re-run the same pipeline.generate command" in err
    zarr.open_group(str(sample), mode="r+").attrs.update({"complete": True})
    sample.with_name("generated.zarr.manifest.json").write_text("{}")
    assert main(["--config", _config(tmp_path, reference=str(tmp_path / "none.hdf5"), reference_standin=None)]) == 2
    err = capsys.readouterr().err
    assert f"evaluate.reference: {tmp_path / 'none.hdf5'} does not exist (and evaluate.reference_standin" in err
    assert main(["--config", _config(tmp_path, extra_args=["--no-such-option"])]) == 2
    assert "evaluate.extra_args: unrecognised" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", _config(tmp_path, reference=None)])
    assert "set evaluate.reference in the config or pass --reference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--generated", str(sample), "--out", str(tmp_path / "o")])
    assert "required without --config: --reference" in capsys.readouterr().err


def test_report_json_is_written_last(tmp_path, monkeypatch):
    import numpy as np

    from pipeline.data.samples import ArraySample
    from pipeline.evaluation import report as report_mod
    from pipeline.evaluation.runner import EvalOptions, evaluate_samples
    from pipeline.physics.geometry import load_geometry

    g = load_geometry("ds2")
    rng = np.random.default_rng(0)
    samples = [ArraySample(rng.gamma(1.0, 3.0, (60, g.n_voxels)) * (rng.random((60, g.n_voxels)) < 0.2),
                           10 ** rng.uniform(3, 6, 60), g, name) for name in ("gen", "ref")]
    opts = EvalOptions(classifiers=(), physics_distances=False, plots=False, progress=False)

    def broken(report, path):
        raise OSError("disk full")

    monkeypatch.setattr(report_mod, "write_markdown", broken)
    with pytest.raises(OSError, match="disk full"):
        evaluate_samples(*samples, opts, tmp_path / "o")
    assert not (tmp_path / "o" / "report.json").exists()
    monkeypatch.undo()
    evaluate_samples(*samples, opts, tmp_path / "o")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["report.json", "report.md"]
