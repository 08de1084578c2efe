"""One typed config for every stage: dataclass schema (:mod:`.schema`), a YAML loader with dotted
``--set`` overrides that names the key path of every error (:mod:`.loader`), and the per-stage scheduler
resources of ``pipeline.launch`` (:mod:`.launch_resources`).

Owns: what a config may contain and its checks. May import: :mod:`pipeline.runtime` only (pure Python
and YAML: importing the config never loads torch or zarr).
"""

from pipeline.config.launch_resources import LaunchConfig, StageResources
from pipeline.config.loader import ConfigError, add_config_arguments, read_yaml, save, to_dict
from pipeline.config.schema import (
    RESOLVED_CONFIG,
    Config,
    DataConfig,
    DiffusionConfig,
    DistillConfig,
    EvaluateConfig,
    GenerateConfig,
    ModelConfig,
    RunConfig,
    StandinConfig,
    StoreLayout,
    TrainConfig,
    load_config,
    save_resolved,
)

__all__ = ["Config", "ConfigError", "DataConfig", "DiffusionConfig", "DistillConfig", "EvaluateConfig",
           "GenerateConfig", "LaunchConfig", "ModelConfig", "RunConfig", "StageResources", "StandinConfig",
           "StoreLayout", "TrainConfig", "add_config_arguments", "load_config", "read_yaml", "save",
           "save_resolved", "to_dict", "RESOLVED_CONFIG"]
