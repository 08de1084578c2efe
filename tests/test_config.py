from pathlib import Path

import pytest
import yaml

from pipeline.config import Config, load_config, save_resolved
from pipeline.config.loader import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["smoke", "ds2", "ds3"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, Config) and cfg.data.inputs


def test_overrides_apply_with_types():
    cfg = load_config(CONFIGS / "smoke.yaml", ["data.batch_size=64", "data.layout.codec=zstd", "run.dir=/tmp/x",
                                               "data.inputs=[a.h5, b.h5]", "data.standin=null"])
    assert cfg.data.batch_size == 64 and cfg.data.layout.codec == "zstd" and cfg.run.dir == "/tmp/x"
    assert cfg.data.inputs == ["a.h5", "b.h5"] and cfg.data.standin is None


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=x", "data.batch_size: expected an integer, got 'x'"),
    ("data.batch_size=2.5", "data.batch_size: expected an integer"),
    ("data.resident=3", "data.resident: expected true or false"),
    ("data.bogus=1", "data.bogus: unknown key"),
    ("data.layout.chunkrows=1", "data.layout.chunkrows: unknown key"),
    ("data.geometry=ds4", "data.geometry: expected one of"),
    ("data.layout.shard_rows=17", "data.layout.shard_rows: must be a positive multiple of chunk_rows"),
    ("data.validation_fraction=1.5", "data.validation_fraction: must be in [0, 1)"),
    ("data.standin.n=0", "data.standin.n: number of stand-in showers must be >= 1"),
    ("data.inputs=[]", "data.inputs: list at least one"),
    ("run=3", "run: expected a mapping"),
    ("data.batch_size.x=1", "data.batch_size: is a value, not a section"),
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
        load_config(CONFIGS / "smoke.yaml", ["data.batch_size"])


def test_yaml_is_loaded_safely(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("run: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "smoke.yaml", ["data.batch_size=48"])
    path = save_resolved(cfg, tmp_path)
    assert yaml.safe_load(path.read_text())["data"]["batch_size"] == 48
    assert load_config(path) == cfg


def test_global_batch_must_divide_over_ranks():
    cfg = load_config(CONFIGS / "smoke.yaml", ["data.batch_size=30"])
    assert cfg.per_rank_batch(3) == 10
    with pytest.raises(ConfigError, match="data.batch_size: 30 does not divide evenly over 4 ranks"):
        cfg.per_rank_batch(4)
