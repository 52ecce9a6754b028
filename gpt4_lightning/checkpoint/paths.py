"""Where a run's checkpoints live and how they are named (`resume` says what `ckpt_path=last|auto|<path>` means).

`<run dir>/checkpoints/stepNNNNNN.ckpt` (a file, or a torch.distributed.checkpoint directory under FSDP), and
`last.ckpt`, a symlink to the newest; `.tmp-*` entries are saves that have not completed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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


def older_checkpoints(checkpoint: Path) -> list[Path]:
    """The step checkpoints beside `checkpoint` older than it, newest first: where `ckpt_path=last` falls back."""
    step = step_of(checkpoint)
    if step is None:
        return []
    steps = [(int(m.group(1)), p) for p in checkpoint.parent.iterdir() if (m := STEP_NAME.match(p.name))]
    return [p for s, p in sorted(steps, reverse=True) if s < step]
