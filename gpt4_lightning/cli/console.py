"""The console of every entry point: library messages the user can do nothing about are dropped, each one
precisely (its message and the module it comes from), so every warning left says something true and actionable.

Kept (they tell the user something): our own warnings, Lightning's about the user's config, every warning not
matched here. Dropped, and why:
- Lightning's "Your `IterableDataset` has `__len__` defined": it warns that `__len__` may be wrong when workers
  duplicate data. Ours is exact: each worker yields a disjoint set of the rank's batches (`data.stream.datamodule`), and
  Lightning needs the length to count a resumed epoch.
- torch's FutureWarning that `LeafSpec` is deprecated, raised inside Lightning's own `_pytree` helper: Lightning's
  code to update, nothing in ours or the user's.
- Lightning's "The `srun` command is available on your system but is not used": it fires on every run on a machine
  with Slurm installed (a login node, an interactive node, CI), and its hint is a wrong command (the script's path,
  not `python -m gpt4_lightning.train`). The one case it is for, several nodes with no launcher, is an error of
  ours naming the launcher (`run.checks.check_trainer`); one node runs without srun as it is.
- Lightning's "💡 Tip" advertisements for its cloud products (litlogger, litmodels), logged at INFO on every run.
"""

from __future__ import annotations

import logging
import warnings

NOISE_WARNINGS = (  # (message regex, module the warning is attributed to, category)
    (r"Your `IterableDataset` has `__len__` defined", r"lightning\.pytorch\.utilities\.data", UserWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree", FutureWarning),
    (r"The `srun` command is available on your system but is not used", r"lightning\.fabric\.plugins\.environments"
     r"\.slurm", UserWarning),  # Lightning's PossibleUserWarning, a UserWarning
)
NOISE_LOGGERS = {"lightning.pytorch.utilities.rank_zero": ("💡 Tip:",)}  # logger -> message prefixes


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_library_noise() -> None:
    """Install the filters above (idempotent: `warnings.filterwarnings` replaces an equal filter)."""
    for message, module, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, prefixes in NOISE_LOGGERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
