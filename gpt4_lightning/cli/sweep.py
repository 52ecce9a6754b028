"""A sweep is checked whole before any of it runs (`CheckedSweeper`, train's sweeper).

Hydra's basic sweeper launches the points in order and learns that point #57 is bad when it gets there, hours in.
`check_points` composes every point's config and runs on it the checks a single run makes before any work
(`run.build.check_run`: ranges, trainer, checkpoint, memory preflight), then the launch goes ahead; one bad
point ends the command with one line naming it, `error: #1 (optim.lr=-1): optim.lr=-1 must be a number > 0`, and
nothing is launched or written. Points that run on other machines (any launcher but Hydra's local one, e.g.
`hydra/launcher=slurm`) are not compared with this machine's devices and memory; `preflight.memory_gib` still
applies.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict

from gpt4_lightning.cli.errors import USER_ERRORS, error_line

LOCAL_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


class CheckedSweeper(BasicSweeper):
    """Hydra's basic sweeper, which first checks every point of the sweep (`check_points`).

    Hydra instantiates a plugin only by a name under `hydra_plugins.` and registers a class under its `__module__`
    (hydra/core/plugins.py): the class lives here with the rest of the CLI and carries the name of its re-export,
    `hydra_plugins/gpt4_lightning_sweeper/checked_sweeper.py`, which Hydra's scan finds."""

    __module__ = "hydra_plugins.gpt4_lightning_sweeper.checked_sweeper"

    def sweep(self, arguments: list[str]) -> Any:
        """Every job's config composed and checked before the first one is launched (or anything written)."""
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        points = [list(job) for batch in self.split_arguments(overrides, None) for job in batch]
        check_points(self.config, self.hydra_context.config_loader, points)
        return super().sweep(arguments)


def check_points(master: DictConfig, config_loader, points: list[list[str]]) -> None:
    """Compose and check each of `points` (a job's overrides each); exit with one `error:` line at the first
    bad one."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or master.hydra.job.name != "train":
        return
    from gpt4_lightning.checkpoint.resume import resolve_ckpt_path
    from gpt4_lightning.run.build import check_run

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
