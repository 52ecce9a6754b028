"""The one wait loop of the tests: poll a predicate until it holds, with a deadline (never a bare sleep)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.05, what: str = "the condition",
               *, proc: subprocess.Popen | None = None, detail: Callable[[], str] | None = None) -> T:
    """Call `predicate()` every `interval_s` seconds until it returns something true, and return that value.

    After `timeout_s` seconds raise AssertionError naming `what` and the timeout (and `detail()`, where given: a
    log tail, a job's record). With `proc`, fail at once, with its exit status and stderr tail, if that process ends
    before the predicate holds. The predicate may itself raise to stop the wait early."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = proc.stderr.read()[-3000:] if proc.stderr else ""
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}: {tail}")
        if time.monotonic() > deadline:
            message = f"gave up waiting for {what} after {timeout_s:g} s"
            raise AssertionError(f"{message}\n{detail()}" if detail is not None else message)
        time.sleep(interval_s)
