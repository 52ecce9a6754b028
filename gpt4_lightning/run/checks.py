"""The run's checks of the trainer config, before any work: what Lightning would reject deep inside `fit` (or accept
and regret), named by key. Each is kept because it comes earlier or says more than Lightning's own: Lightning checks
devices only when the accelerator starts (after the model and data are built), names no config key, and cannot know
that a multi-node run without a launcher waits forever; the precision names are written out because importing
Lightning's takes ~5 s a rejected command should not wait for."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, ListConfig

from gpt4_lightning.utils.env import launched, world_size


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


# Lightning's `_PRECISION_INPUT_STR` and its aliases, written out: importing them loads all of Lightning (~5 s),
# which a rejected command should not wait for (a test keeps the two equal)
LIGHTNING_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
                        "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16")


def check_trainer(trainer: DictConfig, here: bool = True) -> None:
    """What Lightning would reject deep inside `fit` (or accept and regret, like 64 CPU processes on a laptop),
    checked before any work and named by key: devices against this machine (when the run is `here`, not a job
    for another machine), precision, and FSDP's mesh."""
    import torch  # lazily: a bad override is reported before torch loads (~2 s)

    accelerator = str(trainer.get("accelerator", "auto"))
    found = _device_count(trainer.get("devices", "auto"))
    if found is not None and found[0] < 1:
        raise ValueError(f"trainer.devices={trainer.devices} must be >= 1 (or auto)")
    kind = accelerator if here else "elsewhere"
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

    nodes = int(trainer.get("num_nodes", 1))
    if here and nodes > 1 and not launched():
        raise ValueError(f"trainer.num_nodes={nodes} but no launcher started this process (no srun, torchrun or "
                         "NODE_RANK/MASTER_ADDR): it would wait for the other nodes forever; submit "
                         "launch/slurm/train.sbatch (srun on every node), or run on one node with trainer.num_nodes=1")

    precision = trainer.get("precision")
    if precision is not None and str(precision) not in LIGHTNING_PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r} is not a Lightning precision; pick a preset with "
                         "precision=fp32|bf16_mixed|bf16_true, or set trainer.precision to one of "
                         f"{', '.join(LIGHTNING_PRECISIONS)}")

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
