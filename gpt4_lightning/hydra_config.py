"""Hydra wiring shared by the entry points: the config schema, resolvers, and composing `conf/`."""

from __future__ import annotations

import netrc
import os
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from .model import GPT4Config

CONFIG_MODULE = "gpt4_lightning.conf"


def wandb_offline() -> bool:
    """wandb logs offline unless the user is logged in (an API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


def world_size(devices: int | str, num_nodes: int) -> int:
    """Processes a Lightning trainer with these `devices`/`num_nodes` runs ("auto": every GPU, or 1 on CPU)."""
    if devices in ("auto", -1, "-1"):
        import torch

        devices = max(torch.cuda.device_count(), 1)
    return int(devices) * int(num_nodes)


def register_configs() -> None:
    """The model group's schema is the `GPT4Config` dataclass itself: YAML presets only fill it,
    so a misspelt key or a wrongly typed value fails when the config is composed."""
    schema = OmegaConf.structured(GPT4Config)
    OmegaConf.set_readonly(schema, False)
    ConfigStore.instance().store(group="model", name="gpt4_schema", node=schema)
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("world_size"):
        OmegaConf.register_new_resolver("world_size", world_size)
    if not OmegaConf.has_resolver("run_name_or_now"):
        # outputs/<run_name> when the user names the run (so it can be resumed), else outputs/<date>/<time>
        OmegaConf.register_new_resolver(
            "run_name_or_now", lambda name: name if name else datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with overrides outside a Hydra app (tests, notebooks), with
    `${hydra:...}` resolving as in a run whose output directory is `hydra.run.dir`."""
    register_configs()
    with initialize_config_module(CONFIG_MODULE, version_base=None):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = cfg.hydra.run.dir
        cfg.hydra.job.name = config_name
    HydraConfig.instance().set_config(cfg)
    return cfg


def config_dir() -> Path:
    import gpt4_lightning.conf

    return Path(gpt4_lightning.conf.__file__).parent
