"""Hydra wiring shared by the entry points: the schemas in the ConfigStore, resolvers, composing `conf/`."""

from __future__ import annotations

import dataclasses
import netrc
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from gpt4_lightning.config.schema import OPEN_NODES, SCHEMAS
from gpt4_lightning.utils.env import world_size
from gpt4_lightning.utils.names import closest

CONFIG_MODULE = "gpt4_lightning.conf"


def wandb_offline() -> bool:
    """wandb logs offline unless the user is logged in (an API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


def register_configs() -> None:
    """Each entry point's schema (`config.schema`) as `<entry>_schema`, the first default of `conf/<entry>.yaml`:
    YAML presets only fill it, so a misspelt key or a wrongly typed value fails when the config is composed.
    `OPEN_NODES` (the trainer) also take new keys given with `+`, handed to what they instantiate."""
    store = ConfigStore.instance()
    for entry, schema in SCHEMAS.items():
        node = OmegaConf.structured(schema)
        _writable_and_closed(node)
        for key in OPEN_NODES:
            if key in node:
                OmegaConf.set_struct(node[key], False)
        store.store(name=f"{entry}_schema", node=node)
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("world_size"):
        OmegaConf.register_new_resolver("world_size", world_size)
    if not OmegaConf.has_resolver("run_name_or_now"):
        # outputs/<run_name> when the user names the run (so it can be resumed), else outputs/<date>/<time>
        OmegaConf.register_new_resolver(
            "run_name_or_now", lambda name: name if name else datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))


def _writable_and_closed(node: DictConfig) -> None:
    """Frozen dataclasses (GPT4Config) give read-only nodes, but presets must fill them; and every node is
    closed to new keys on its own (Hydra opens the root to add `+key` overrides, and a typed child that only
    inherits the root's flag would then take `+model.dimm=3`)."""
    OmegaConf.set_readonly(node, False)
    OmegaConf.set_struct(node, True)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _writable_and_closed(child)


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


def default_config(config_name: str) -> DictConfig:
    """`conf/<config_name>.yaml` composed without overrides and without the `hydra` node, unresolved; inside a
    running Hydra app (the end of `train`) through its already initialised Hydra, else a fresh one."""
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name)
    with initialize_config_module(CONFIG_MODULE, version_base=None):
        return compose(config_name=config_name)


def config_dir() -> Path:
    import gpt4_lightning.conf

    return Path(gpt4_lightning.conf.__file__).parent


def to_typed(cfg: DictConfig) -> Any:
    """The composed config as its schema's objects (`config.schema`, e.g. a `TrainConfig`): interpolations
    resolved, and every `__post_init__` range check run (a `ValueError` naming the key)."""
    if "hydra" in cfg:  # compose_config keeps it; a Hydra app's task config has none
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    _check_no_added_keys(cfg, "")
    return OmegaConf.to_object(cfg)


def _check_no_added_keys(node: DictConfig, path: str) -> None:
    """`+model.dimm=3` gets past composing (Hydra's `+` forces the key in); the schema has no such field."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema) and path.rstrip(".") not in OPEN_NODES:
        fields = {f.name for f in dataclasses.fields(schema)}
        extra = sorted(str(k) for k in node if k not in fields)
        if extra:
            close = closest(extra[0], fields, n=1)
            hint = (f"did you mean {path}{close[0]}?" if close else
                    f"the keys of {path.rstrip('.') or 'the config'} are: {', '.join(sorted(fields))}")
            raise ValueError(f"{path}{extra[0]} is not a key of this config ({hint}); remove +{path}{extra[0]}=...")
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _check_no_added_keys(child, f"{path}{key}.")
