"""`CheckedSweeper`: Hydra's basic sweeper, which first checks every point of the sweep (gpt4_lightning.cli.sweep).

Hydra only loads classes from the `hydra_plugins` package as sweepers; the checks themselves are in
`gpt4_lightning/cli/sweep.py`. Hydra imports this module at every start: it imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser


class CheckedSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        """Every job's config composed and checked before the first one is launched (or anything written)."""
        assert self.config is not None and self.hydra_context is not None
        from gpt4_lightning.cli.sweep import check_points

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        points = [list(job) for batch in self.split_arguments(overrides, None) for job in batch]
        check_points(self.config, self.hydra_context.config_loader, points)
        return super().sweep(arguments)
