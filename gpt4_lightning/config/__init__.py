"""The typed config tree (`schema`) and its Hydra wiring (`hydra`): `conf/` holds the values."""

from gpt4_lightning.config.hydra import compose_config, config_dir, register_configs, to_typed
from gpt4_lightning.config.schema import SCHEMAS, EvaluateConfig, ExportConfig, GenerateConfig, TrainConfig

__all__ = ["SCHEMAS", "EvaluateConfig", "ExportConfig", "GenerateConfig", "TrainConfig", "compose_config",
           "config_dir", "register_configs", "to_typed"]
