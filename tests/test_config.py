from pathlib import Path

import pytest
import yaml

from pipeline.config import Config, load_config, save_resolved, to_dict
from pipeline.config.loader import ConfigError
from pipeline.config.moved_keys import MOVED_KEYS
from pipeline.tools.info import model_info

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, Config) and cfg.data.inputs


def test_the_ds3_gpu_fidelity_sampler_costs_at_most_200_gflop_per_shower():
    """The issue's budget for the distilled ds3 sampler: a few ms per shower on one H100."""
    cfg = load_config(CONFIGS / "fidelity_ds3_gpu.yaml")
    info = model_info(cfg)
    per_shower = cfg.distill.final_steps * sum(n["flops"] for n in info.values())
    assert cfg.data.geometry == "ds3" and 150e9 < per_shower <= 200e9


def test_overrides_apply_with_types():
    cfg = load_config(CONFIGS / "smoke.yaml", ["data.global_batch_size=64",
                                               "data.layout.codec=zstd", "run.dir=/tmp/x",
                                               "data.inputs=[a.h5, b.h5]", "data.standin=null"])
    assert (cfg.data.global_batch_size == 64 and cfg.data.layout.codec == "zstd"
            and cfg.run.dir == "/tmp/x")
    assert cfg.data.inputs == ["a.h5", "b.h5"] and cfg.data.standin is None


@pytest.mark.parametrize("override,message", [
    ("data.global_batch_size=x", "data.global_batch_size: expected an integer, got 'x'"),
    ("data.global_batch_size=2.5", "data.global_batch_size: expected an integer"),
    ("data.resident=3", "data.resident: expected true or false"),
    ("data.bogus=1", "data.bogus: unknown key"),
    ("data.layout.chunkrows=1", "data.layout.chunkrows: unknown key"),
    ("data.geometry=ds4", "data.geometry: expected one of"),
    ("data.layout.shard_rows=17",
     "data.layout.shard_rows: must be a positive multiple of chunk_rows"),
    ("data.validation_fraction=1.5", "data.validation_fraction: must be in [0, 1)"),
    ("data.standin.n=0", "data.standin.n: number of stand-in showers must be >= 1"),
    ("data.inputs=[]", "data.inputs: list at least one"),
    ("run=3", "run: expected a mapping"),
    ("data.global_batch_size.x=1", "data.global_batch_size: is a value, not a section"),
])
def test_errors_name_the_key_path(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "smoke.yaml", [override])
    assert message in str(err.value)
    assert "smoke.yaml" in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(CONFIGS / "smoke.yaml", ["data.global_batch_size"])


def test_yaml_is_loaded_safely(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("run: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "smoke.yaml", ["data.global_batch_size=48"])
    path = save_resolved(cfg, tmp_path)
    assert yaml.safe_load(path.read_text())["data"]["global_batch_size"] == 48
    assert load_config(path) == cfg


def test_global_batch_must_divide_over_ranks():
    cfg = load_config(CONFIGS / "smoke.yaml", ["data.global_batch_size=30"])
    assert cfg.per_rank_batch(3) == 10
    with pytest.raises(ConfigError,
                       match="data.global_batch_size: 30 does not divide evenly over 4 ranks"):
        cfg.per_rank_batch(4)


OLD_CONFIG = {  # a config in the keys of 2026-11 (every setting that has moved since)
    "data": {"inputs": ["a.h5"], "batch_size": 48},
    "diffusion": {"sample_steps": 16, "eta": 0.5, "prediction": "x"},
    "train": {"max_steps": 9, "precision": "fp32", "channels_last": True, "cudnn_benchmark": False,
              "betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.1, "grad_clip": 2.0,
              "min_lr_ratio": 0.2, "fused_optimizer": False, "val_every_steps": 7,
              "val_batches": 3, "eval_every_steps": 5, "eval_showers": 40, "eval_sample_steps": 4,
              "eval_bins": 12},
    "generate": {"clip_x": True, "threshold_fractions": True, "batch_size": 8, "precision": "bf16",
                 "channels_last": False, "cudnn_benchmark": True},
}


@pytest.mark.parametrize("old,new", sorted(MOVED_KEYS.items()))
def test_a_moved_key_is_an_error_naming_its_new_home(tmp_path, old, new):
    section, key = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"data": {"inputs": ["a.h5"]},
                                    section: {key: OLD_CONFIG[section][key]}}))
    with pytest.raises(ConfigError, match=rf"old.yaml: {old}: this key moved to {new}"):
        load_config(path)
    # as an override too
    with pytest.raises(ConfigError, match=rf"{old}: this key moved to {new}"):
        load_config(None, ["data.inputs=[a.h5]",
                           f"{old}={yaml.safe_dump(OLD_CONFIG[section][key]).split()[0]}"])


def test_a_runs_old_resolved_config_reads_with_every_value_in_its_new_home(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(OLD_CONFIG))
    cfg = load_config(path, written_by_a_run=True)
    assert (cfg.data.global_batch_size, cfg.sampling.steps, cfg.sampling.eta,
            cfg.diffusion.prediction) == (48, 16, 0.5, "x")
    assert (cfg.sampling.clip_x, cfg.sampling.threshold_fractions,
            cfg.generate.per_rank_batch_size) == (True, True, 8)
    assert to_dict(cfg.device) == {"precision": "fp32", "channels_last": True,
                                   "cudnn_benchmark": False}  # train's
    assert to_dict(cfg.optim) == {"betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.1,
                                  "grad_clip": 2.0, "min_lr_ratio": 0.2, "fused": False}
    assert to_dict(cfg.train.validation) == {"every_steps": 7, "per_rank_batches": 3}
    assert to_dict(cfg.train.monitor) == {"every_steps": 5, "showers": 40, "sample_steps": 4,
                                          "bins": 12}
    assert cfg.train.max_steps == 9


def test_every_moved_key_is_in_the_configuration_guide():
    guide = (CONFIGS.parent / "docs" / "configuration.md").read_text()
    missing = [f"{old} -> {new}" for old, new in MOVED_KEYS.items()
               if f"`{old}` | `{new}`" not in guide]
    assert not missing, f"docs/configuration.md lacks rows for: {missing}"
