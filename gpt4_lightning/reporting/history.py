"""A run's logged metrics, read back from its `logs/metrics.csv` (every logger keeps one: `run.build`).

The CSV is written by `training.loggers.ResumableCSVLogger`: one row per logging call, a column per metric, empty
where a row does not have it. A resumed run appends, so a step logged before a kill and again after the resume
appears twice; the later row wins (it is what the resumed run trained on). Reading is O(rows): one row per
`log_every_n_steps`, a few MB for a week-long run.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METRICS_CSV = Path("logs") / "metrics.csv"


@dataclass
class Series:
    """One metric: `steps` (optimizer steps, increasing) and `values`, both shape `(n,)`."""

    steps: np.ndarray
    values: np.ndarray

    @property
    def last(self) -> float:
        return float(self.values[-1])


@dataclass
class History:
    """Every metric of a run, by name (`train/loss`, `val/loss`, `perf/tokens_seen`, ...)."""

    series: dict[str, Series] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.series

    def __getitem__(self, name: str) -> Series:
        return self.series[name]

    @property
    def last_step(self) -> int:
        return max((int(s.steps[-1]) for s in self.series.values() if len(s.steps)), default=0)

    def tokens_at(self, steps: np.ndarray) -> np.ndarray | None:
        """Tokens seen at each of `steps`: interpolated between the logged `perf/tokens_seen`, and beyond them at the
        run's mean tokens per step (every optimizer step takes one global batch); None if the run did not log it."""
        seen = self.series.get("perf/tokens_seen")
        if seen is None or len(seen.steps) == 0:
            return None
        per_step = seen.values[-1] / max(int(seen.steps[-1]), 1)
        steps = np.asarray(steps, dtype=np.float64)
        inside = (steps >= seen.steps[0]) & (steps <= seen.steps[-1])
        return np.where(inside, np.interp(steps, seen.steps, seen.values), steps * per_step)


def read_history(run_dir: str | Path) -> History:
    """The metrics of `run_dir/logs/metrics.csv`; an empty History when the run logged nothing (`logger=none`,
    or killed before its first logging step)."""
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        return History()
    by_metric: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for name, text in row.items():
                if name in ("step", "epoch") or not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    by_metric.setdefault(name, {})[int(float(step))] = value  # a later row of a step wins
    series = {}
    for name, points in by_metric.items():
        steps = np.array(sorted(points), dtype=np.int64)
        series[name] = Series(steps, np.array([points[s] for s in steps], dtype=np.float64))
    return History(series)
