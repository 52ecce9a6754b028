"""Exclusive file locks that the kernel drops however the holder ends (`kill -9` included), from `filelock`.

`fallback_to_soft=False`: on a filesystem without `flock` (Lustre without `-o flock`, some NFS) filelock would
otherwise switch to a lock file whose existence is the lock, which a killed holder leaves behind, so a requeued job
would wait for a dead run; here that case is an `OSError` the caller decides about.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from filelock import FileLock, Timeout

# flock errors that mean "this filesystem does not lock", not "someone holds it"
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

__all__ = ["UNSUPPORTED", "Timeout", "exclusive_lock"]


def exclusive_lock(path: str | os.PathLike, timeout_s: float = -1,
                   on_acquired: Callable[[int], None] | None = None) -> FileLock:
    """A lock on file `path` (created if missing, kept on release): `.acquire()` waits up to `timeout_s` (-1: for
    ever, 0: not at all) and raises `filelock.Timeout`; `on_acquired(fd)` runs once it is held (e.g. to record the
    holder in the file). Use as a context manager or acquire/release."""
    return FileLock(path, timeout=timeout_s, fallback_to_soft=False, preserve_lock_file=True,
                    on_acquired=on_acquired, poll_interval=0.5)
