"""What every entry point does with a failure a user can fix: one line on stderr, exit status 1.

Bad input or config (`ValueError`, which `DataError` is; `OSError`; OmegaConf errors such as a missing
`???` value; a configured object such as the Trainer rejecting its arguments) ends with `error: <message>`
naming the key or file and the fix; a traceback helps nobody there. HYDRA_FULL_ERROR=1 re-raises for the
traceback. Hydra catches exceptions from the task function itself, so they are handled inside it.

A rejected command leaves the disk as it found it (`run_dir.RunDirGuard`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

T = TypeVar("T")
USER_ERRORS = (ValueError, OSError, OmegaConfBaseException, InstantiationException)


def error_line(exc: BaseException) -> str:
    if isinstance(exc, MissingMandatoryValue):
        key = exc.full_key or "a value"
        return f"{key} is required (it is ??? in the config); add {key}=<value> to the command line"
    if isinstance(exc, InstantiationException):
        return _instantiation_line(exc)
    return one_line(str(exc)) or type(exc).__name__


def one_line(text: str) -> str:
    return " ".join(text.split())


def _instantiation_line(exc: InstantiationException) -> str:
    """`Error in call to target 'lightning...Trainer': TypeError(...) full_key: trainer` -> which config node
    built what, and what the object said about its arguments."""
    text = str(exc)
    key = re.search(r"full_key: (\S+)", text)
    target = re.search(r"target '([^']+)'", text)
    cause, lines = exc.__cause__, text.splitlines()
    reason = one_line(str(cause)) if cause is not None and str(cause) else one_line(lines[1] if len(lines) > 1 else "")
    node = key.group(1) if key else "a config node"
    built = f" ({target.group(1)})" if target else ""
    return f"{node}{built} rejected its arguments: {reason}; check the {node}.* values"


def run_cli(fn: Callable[..., T], *args: Any, on_error: Callable[[], None] | None = None) -> T:
    """`fn(*args)`, a user error ending in one `error:` line and exit status 1 (after `on_error`)."""
    try:
        return fn(*args)
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if on_error is not None:
            on_error()
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(1)
