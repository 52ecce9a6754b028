"""Loggers: a CSV logger that keeps a run's history when the run is resumed; Lightning's wandb logger without
an obsolete argument.

Lightning's `CSVLogger` deletes `metrics.csv` when a new run starts in the same log directory, so
`ckpt_path=last` (or a requeued Slurm job) would lose every row logged before the resume. This one
appends, continuing with the file's columns. Steps logged twice (before a kill, and again after the
resume from an earlier checkpoint) appear twice; the later row is the resumed run's.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class WandbLogger(LightningWandbLogger):
    """Lightning's `WandbLogger`, minus the `anonymous=None` it always hands to `wandb.init`: wandb deprecated the
    setting and warns on every run that it has no effect, whatever its value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
