"""Train's sweeper for Hydra's discovery: Hydra loads sweepers only from the `hydra_plugins` package, so this module
re-exports `gpt4_lightning.cli.sweep.CheckedSweeper` (every point of a sweep checked before the first job starts).
Hydra imports it at every start: the class's module imports nothing heavy at the top."""

from gpt4_lightning.cli.sweep import CheckedSweeper

__all__ = ["CheckedSweeper"]
