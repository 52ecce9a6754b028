"""Hydra wiring shared by the entry points: the config schema, resolvers, and composing `conf/`."""

from __future__ import annotations

import netrc
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

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


def _device_count(devices: Any) -> tuple[int, list[int]] | None:
    """(count, explicit indices) for a Lightning `devices` value; None for "auto"/-1 (every device)."""
    if devices is None or devices in ("auto", -1, "-1"):
        return None
    if isinstance(devices, ListConfig):
        devices = list(devices)
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    try:
        if isinstance(devices, (list, tuple)):
            indices = [int(d) for d in devices]
            if any(i < 0 for i in indices):
                raise ValueError
            return len(indices), indices
        if isinstance(devices, bool) or (isinstance(devices, float) and not devices.is_integer()):
            raise ValueError
        return int(devices), []
    except (TypeError, ValueError):
        raise ValueError(f"trainer.devices={devices!r} is not a device count; use a positive integer, a list of "
                         "device indices, or auto") from None


def uses_fsdp(trainer: DictConfig) -> bool:
    """Whether the trainer config shards the model: Lightning's `ModelParallelStrategy` (conf/trainer/fsdp.yaml),
    which writes sharded (torch.distributed.checkpoint) checkpoints."""
    strategy = trainer.get("strategy")
    return isinstance(strategy, DictConfig) and str(strategy.get("_target_", "")).endswith("ModelParallelStrategy")


def check_trainer(trainer: DictConfig) -> None:
    """What Lightning would reject deep inside `fit` (or accept and regret, like 64 CPU processes on a laptop),
    checked before any work and named by key: devices against this machine, precision, and FSDP's mesh."""
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    found = _device_count(trainer.get("devices", "auto"))
    if found is not None and found[0] < 1:
        raise ValueError(f"trainer.devices={trainer.devices} must be >= 1 (or auto)")
    kind = accelerator
    if kind == "auto":
        kind = "gpu" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if kind in ("gpu", "cuda"):
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ValueError(f"trainer.accelerator={accelerator} but torch sees no CUDA GPU on this machine; use "
                             "trainer.accelerator=cpu (or auto)")
        if found is not None and (found[0] > gpus or any(i >= gpus for i in found[1])):
            raise ValueError(f"trainer.devices={trainer.devices} asks for more GPUs than the {gpus} this machine has "
                             f"(torch.cuda.device_count()); lower trainer.devices to <= {gpus} (or auto: all of them), "
                             "or add machines with trainer.num_nodes")
    elif kind == "cpu" and found is not None:
        cpus = os.cpu_count() or 1
        if found[0] > cpus:
            raise ValueError(f"trainer.devices={trainer.devices} with trainer.accelerator={accelerator} would start "
                             f"{found[0]} processes on the {cpus} CPU cores of this machine; lower trainer.devices to "
                             f"<= {cpus}")

    precision = trainer.get("precision")
    if precision is not None:
        from typing import get_args

        from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

        allowed = [*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS)]
        if str(precision) not in allowed:
            raise ValueError(f"trainer.precision={precision!r} is not a Lightning precision; pick a preset with "
                             "precision=fp32|bf16_mixed|bf16_true, or set trainer.precision to one of "
                             f"{', '.join(allowed)}")

    if uses_fsdp(trainer):
        strategy = trainer.strategy
        tp, dp = strategy.get("tensor_parallel_size", 1), strategy.get("data_parallel_size", "auto")
        if tp not in ("auto", 1):
            raise ValueError(f"trainer.strategy.tensor_parallel_size={tp}: gpt4_lightning shards the model with "
                             "FSDP2 only (no tensor parallelism); set it to 1 and scale with trainer.devices / "
                             "trainer.num_nodes")
        if dp != "auto" and found is not None and not found[1]:
            world = world_size(found[0], trainer.get("num_nodes", 1))
            if int(dp) != world:
                raise ValueError(f"trainer.strategy.data_parallel_size={dp} must equal the number of processes, "
                                 f"trainer.devices x trainer.num_nodes = {world} (FSDP2 shards over all of them); "
                                 "leave it at its default (all processes)")


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
