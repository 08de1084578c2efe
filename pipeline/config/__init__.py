"""One typed config for every stage: dataclass schema (:mod:`.schema`, training's sections in
:mod:`.training_sections`), a YAML loader with dotted ``--set`` overrides that names the key path of
every error (:mod:`.loader`), the keys that moved (:mod:`.moved_keys`), and the per-stage scheduler
resources of ``pipeline.launch`` (:mod:`.launch_resources`).

Owns: what a config may contain and its checks. May import: :mod:`pipeline.runtime` only (pure
Python and YAML: importing the config never loads torch or zarr).
"""

from pipeline.config.launch_resources import LaunchConfig, StageResources
from pipeline.config.loader import ConfigError, add_config_arguments, read_yaml, save, to_dict
from pipeline.config.schema import (
    RESOLVED_CONFIG,
    Config,
    DataConfig,
    DeviceConfig,
    DiffusionConfig,
    EvaluateConfig,
    GenerateConfig,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    StandinConfig,
    StoreLayout,
    load_config,
    save_resolved,
)
from pipeline.config.training_sections import (
    DistillConfig,
    MonitorConfig,
    OptimConfig,
    StageSchedule,
    TrainConfig,
    ValidationConfig,
)

__all__ = ["Config", "ConfigError", "DataConfig", "DeviceConfig", "DiffusionConfig",
           "DistillConfig", "EvaluateConfig", "GenerateConfig", "LaunchConfig", "ModelConfig",
           "MonitorConfig", "OptimConfig", "RunConfig", "SamplingConfig", "StageResources",
           "StageSchedule", "StandinConfig", "StoreLayout", "TrainConfig", "ValidationConfig",
           "add_config_arguments", "load_config", "read_yaml", "save", "save_resolved", "to_dict",
           "RESOLVED_CONFIG"]
