"""What the environment says about this process before any process group exists: its rank, the world size a
trainer config starts, and where prepared data is cached."""

from __future__ import annotations

import os
from pathlib import Path

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
# set by a launcher that starts processes on several nodes: srun, torchrun, or by hand for Lightning's own
LAUNCHER_VARIABLES = ("SLURM_NTASKS", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "NODE_RANK", "MASTER_ADDR")
CACHE_ENV = "GPT4_LIGHTNING_CACHE"


def is_global_rank_zero() -> bool:
    """Whether this process is global rank 0 (or the only one): from the variables torchrun, srun and Lightning's
    launcher set (RANK, SLURM_PROCID; LOCAL_RANK and NODE_RANK)."""
    return all(os.environ.get(v, "0") == "0" for v in RANK_VARIABLES)


def launched() -> bool:
    """Whether a multi-node launcher (srun, torchrun, or Lightning's variables set by hand) started this process."""
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


def world_size(devices: int | str, num_nodes: int) -> int:
    """Processes a Lightning trainer with these `devices`/`num_nodes` runs ("auto": every GPU, or 1 on CPU)."""
    if devices in ("auto", -1, "-1"):
        import torch  # lazily: config composition should not load torch for a number

        devices = max(torch.cuda.device_count(), 1)
    return int(devices) * int(num_nodes)


def default_cache_dir() -> Path:
    """`$GPT4_LIGHTNING_CACHE`, else `$XDG_CACHE_HOME/gpt4_lightning`, else `~/.cache/gpt4_lightning`."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "gpt4_lightning"
