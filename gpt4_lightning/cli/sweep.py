"""A sweep is checked whole before any of it runs (`hydra_plugins/gpt4_lightning_sweeper`, train's sweeper).

Hydra's basic sweeper launches the points in order and learns that point #57 is bad when it gets there, hours in.
`check_points` composes every point's config and runs on it the checks a single run makes before any work
(`training.build.check_run`: ranges, trainer, checkpoint, memory preflight), then the launch goes ahead; one bad
point ends the command with one line naming it, `error: #1 (optim.lr=-1): optim.lr=-1 must be a number > 0`, and
nothing is launched or written. Points that run on other machines (any launcher but Hydra's local one, e.g.
`hydra/launcher=slurm`) are not compared with this machine's devices and memory; `preflight_memory_gib` still
applies.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict

LOCAL_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def check_points(master: DictConfig, config_loader, points: list[list[str]]) -> None:
    """Compose and check each of `points` (a job's overrides each); exit with one `error:` line at the first
    bad one."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or master.hydra.job.name != "train":
        return
    from ..checkpoint.paths import resolve_ckpt_path
    from ..training.build import check_run
    from .launch import USER_ERRORS, error_line

    here = str(master.hydra.launcher.get("_target_", "")) == LOCAL_LAUNCHER
    varying = [o for o in {o for p in points for o in p} if sum(o in p for p in points) < len(points)]
    sweep_dir = Path(str(master.hydra.sweep.dir))
    saved = HydraConfig.instance().cfg
    try:
        for num, overrides in enumerate(points):
            try:
                cfg = config_loader.load_sweep_config(master_config=master, sweep_overrides=list(overrides))
                with open_dict(cfg):
                    cfg.hydra.job.num = num
                    cfg.hydra.runtime.output_dir = str(sweep_dir / str(cfg.hydra.sweep.subdir))
                HydraConfig.instance().set_config(cfg)  # ${hydra:...} in the job's config resolves as in the job
                job_dir = Path(cfg.hydra.runtime.output_dir)
                check_run(cfg, resolve_ckpt_path(cfg.ckpt_path, job_dir), here=here)
            except (*USER_ERRORS, HydraException) as e:
                named = [o for o in overrides if o in varying] or overrides  # what makes this point this point
                print(f"error: #{num} ({' '.join(named)}): {error_line(e)}; no job of the sweep was launched",
                      file=sys.stderr)
                sys.exit(1)
    finally:
        if saved is not None:
            HydraConfig.instance().set_config(saved)
