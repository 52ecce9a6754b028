"""What every entry point does with a failure a user can fix: one line on stderr, exit status 1.

Bad input or config (`ValueError`, which `DataError` is; `OSError`; OmegaConf errors such as a missing
`???` value) ends with `error: <message>` naming the key or file and the fix; a traceback helps nobody
there. HYDRA_FULL_ERROR=1 re-raises for the traceback. Hydra catches exceptions from the task function
itself, so they are handled inside it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

T = TypeVar("T")
USER_ERRORS = (ValueError, OSError, OmegaConfBaseException)


def error_line(exc: BaseException) -> str:
    if isinstance(exc, MissingMandatoryValue):
        key = exc.full_key or "a value"
        return f"{key} is required (it is ??? in the config); add {key}=<value> to the command line"
    return str(exc).replace("\n", " ").strip() or type(exc).__name__


def run_cli(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(1)


def check_overrides(config_name: str, argv: list[str]) -> None:
    """Compose the config once before Hydra runs, so a bad override (unknown option or key, wrong
    type) ends in one `error:` line naming it and the choices, instead of Hydra's multi-line report.
    Multirun and Hydra's own flags are left to Hydra."""
    overrides = argv[1:]
    if any(a.startswith("-") for a in overrides) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    from .hydra_config import compose_config

    try:
        compose_config(config_name, overrides)
    except (HydraException, OmegaConfBaseException) as e:
        message = " ".join(str(e).replace("Available options", "; available options").split())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def launch(config_name: str, fn: Callable[[DictConfig], Any]) -> None:
    """The body of every `python -m gpt4_lightning.<entry>`: register the config schema and resolvers,
    pre-check the overrides, then run `fn` on the composed config as a Hydra app (`conf/<config_name>.yaml`,
    which names the job), turning user errors into one line."""
    from .hydra_config import register_configs

    register_configs()
    check_overrides(config_name, sys.argv)

    @hydra.main(config_path="pkg://gpt4_lightning.conf", config_name=config_name, version_base=None)
    def main(cfg: DictConfig) -> None:
        run_cli(fn, cfg)

    main()
