"""Where a run's checkpoints live and what `ckpt_path=last|auto|<path>` means.

`<run dir>/checkpoints/stepNNNNNN.ckpt` (a file, or a torch.distributed.checkpoint directory under FSDP), and
`last.ckpt`, a symlink to the newest; `.tmp-*` entries are saves that have not completed.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
TEMPORARY_PREFIX = ".tmp-"
STEP_NAME = re.compile(r"^step(\d+)\.ckpt$")


def step_name(step: int) -> str:
    return f"step{step:06d}.ckpt"


def step_of(path: str | Path) -> int | None:
    """The global step in a checkpoint's name (`stepNNNNNN.ckpt`, through the `last.ckpt` link)."""
    found = STEP_NAME.match(Path(os.path.realpath(path)).name)
    return int(found.group(1)) if found else None


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` means this run directory's `checkpoints/last.ckpt`; `auto` the same when it exists, else a
    fresh start (what a requeued Slurm job wants); any other value is a path."""
    if ckpt_path is None:
        return None
    path = checkpoint_dir(run_dir) / LAST if ckpt_path in ("last", "auto") else Path(ckpt_path)
    if ckpt_path == "auto":
        if not path.exists():
            log.info("ckpt_path=auto: no checkpoint in %s, starting fresh", path.parent)
            return None
        ckpt_path = "last"
    if not path.exists():
        hint = ("pass the run's directory: run_name=<name> or hydra.run.dir=<dir> with ckpt_path=last"
                if ckpt_path == "last" else "check ckpt_path")
        raise ValueError(f"ckpt_path={ckpt_path}: no checkpoint at {path}; {hint}")
    log.info("resuming from %s (step %s)", os.path.realpath(path), step_of(path))
    return str(path)
